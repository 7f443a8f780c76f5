//! Decoding ordered maps from snapshots in one pass.
//!
//! serde decodes a `BTreeMap` by inserting entry after entry, each insertion searching
//! from the root: a snapshot's maps arrive in key order, so every search walks to the
//! right edge of the tree, comparing the new key with most keys on the way (a million
//! string comparisons for 100,000 probes). [`deserialize`] collects the entries and
//! builds the map in one pass instead (`BTreeMap::from_iter` checks the order in one
//! sweep and builds the tree bottom-up). The encoding is the map's own; a later
//! duplicate key replaces an earlier one, as insertion would.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// Entries reserved up front at most, whatever length the input claims.
const MAX_RESERVE: usize = 1 << 16;

/// `#[serde(deserialize_with = "ordered_map::deserialize")]` for a `BTreeMap` field.
///
/// # Errors
/// The input is not a map of `K` to `V`.
pub fn deserialize<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    deserializer.deserialize_map(Entries(PhantomData))
}

struct Entries<K, V>(PhantomData<(K, V)>);

impl<'de, K, V> Visitor<'de> for Entries<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    type Value = BTreeMap<K, V>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_RESERVE));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(entries.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        map: BTreeMap<String, u64>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Ordered {
        #[serde(deserialize_with = "deserialize")]
        map: BTreeMap<String, u64>,
    }

    proptest! {
        /// The same bytes decode to the same map as serde's own decoding, in any order
        /// and with duplicate keys (the last one wins).
        #[test]
        fn decodes_as_the_plain_map_does(
            entries in proptest::collection::vec(("[a-d]{0,3}", any::<u64>()), 0..64),
        ) {
            // A map encoding in the given order, duplicates included: a length, then
            // key and value after key and value.
            let mut bytes = postcard::to_stdvec(&entries.len()).expect("encodes");
            for entry in &entries {
                bytes.extend(postcard::to_stdvec(entry).expect("encodes"));
            }
            let plain: Plain = postcard::from_bytes(&bytes).expect("decodes");
            let ordered: Ordered = postcard::from_bytes(&bytes).expect("decodes");
            prop_assert_eq!(&plain.map, &ordered.map);
            let expected: BTreeMap<String, u64> = entries.into_iter().collect();
            prop_assert_eq!(ordered.map, expected);
        }

        /// Garbage input decodes exactly as serde's own decoding would (the same map, or
        /// an error where it errs), never a panic or a huge allocation.
        #[test]
        fn garbage_decodes_as_the_plain_map_does(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let plain = postcard::from_bytes::<Plain>(&bytes).ok();
            let ordered = postcard::from_bytes::<Ordered>(&bytes).ok();
            prop_assert_eq!(plain.map(|p| p.map), ordered.map(|o| o.map));
        }
    }

    #[test]
    fn a_claimed_length_beyond_the_input_is_refused() {
        let mut bytes = postcard::to_stdvec(&u32::MAX).expect("encodes");
        bytes.extend(postcard::to_stdvec(&("k", 1u64)).expect("encodes"));
        assert!(postcard::from_bytes::<Ordered>(&bytes).is_err());
    }
}

//! This cluster's own bundle as the federation holds it, against what the agent recorded
//! as published.
//!
//! The watch delivers every member's bundle, this cluster's own included; the agent
//! serves its own from its bundle source, but keeps what the federation holds of it to
//! compare. A record that says "published" while the federation holds other authorities
//! (the federation was restored from an older backup, say) would otherwise leave every
//! other member trusting the old authorities while `agent status` shows √: the agent
//! publishes again instead, once per bundle the federation holds, and reports the
//! difference until it is gone.

use serde::{Deserialize, Serialize};

/// This cluster's bundle as the federation holds it, from the watch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBundle {
    /// Its sequence.
    pub sequence: u64,
    /// Digest of its authorities (see the runtime's `authorities_digest`).
    pub authorities_digest: String,
}

/// What the agent concludes from comparing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to compare yet (no bundle from the source or the watch), or the view is
    /// older than the agent's last publication.
    Unknown,
    /// The federation holds the source's authorities.
    Current,
    /// The federation holds other authorities though the agent recorded publishing the
    /// source's: the record is wrong; publish again.
    Republish,
    /// The federation holds other authorities, and the agent knows it (a publication
    /// pending or refused, or already re-published once for this held bundle).
    Differs,
}

/// What the agent recorded of its last publication.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recorded<'a> {
    /// Digest of the authorities it published.
    pub digest: Option<&'a str>,
    /// Revision the federation answered the publication with (unknown: 0).
    pub revision: Option<u64>,
}

/// Compares the held bundle, as of a view complete at `view_revision`, with the source's
/// and the record. The view's revision counts, not the revision of the event that
/// delivered the bundle: a snapshot sends each bundle at the revision that made it, and
/// a bundle restored from a backup keeps its old one. `reacted_to` is the held digest
/// the agent last re-published for: it re-publishes at most once for each.
#[must_use]
pub fn judge(
    held: Option<&HeldBundle>,
    view_revision: u64,
    source_digest: Option<&str>,
    recorded: Recorded<'_>,
    reacted_to: Option<&str>,
) -> Verdict {
    let (Some(held), Some(source)) = (held, source_digest) else {
        return Verdict::Unknown;
    };
    if held.authorities_digest == source {
        return Verdict::Current;
    }
    if view_revision < recorded.revision.unwrap_or(0) {
        // A view from before the publication: it cannot show it yet.
        return Verdict::Unknown;
    }
    if recorded.digest == Some(source) && reacted_to != Some(held.authorities_digest.as_str()) {
        return Verdict::Republish;
    }
    Verdict::Differs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(digest: &str) -> HeldBundle {
        HeldBundle { sequence: 3, authorities_digest: digest.into() }
    }

    fn recorded(digest: &str, revision: u64) -> Recorded<'_> {
        Recorded { digest: Some(digest), revision: Some(revision) }
    }

    #[test]
    fn the_federation_holding_the_source_bundle_is_current() {
        assert_eq!(
            judge(Some(&held("new")), 9, Some("new"), recorded("new", 5), None),
            Verdict::Current
        );
        assert_eq!(judge(None, 9, Some("new"), recorded("new", 5), None), Verdict::Unknown);
        assert_eq!(judge(Some(&held("new")), 9, None, recorded("new", 5), None), Verdict::Unknown);
    }

    #[test]
    fn a_record_the_federation_contradicts_is_republished_once() {
        // Restored from an older backup: the federation holds "old" at a later revision.
        let restored = held("old");
        assert_eq!(
            judge(Some(&restored), 12, Some("new"), recorded("new", 5), None),
            Verdict::Republish
        );
        // Re-published once for this held bundle; if the federation still holds it (the
        // publication was refused), the agent reports it instead of trying again.
        assert_eq!(
            judge(Some(&restored), 12, Some("new"), recorded("new", 5), Some("old")),
            Verdict::Differs
        );
        // A record of an older agent (no revision) is judged all the same.
        let unknown_revision = Recorded { digest: Some("new"), revision: None };
        assert_eq!(
            judge(Some(&restored), 12, Some("new"), unknown_revision, None),
            Verdict::Republish
        );
    }

    #[test]
    fn a_view_from_before_the_publication_proves_nothing() {
        assert_eq!(
            judge(Some(&held("old")), 4, Some("new"), recorded("new", 5), None),
            Verdict::Unknown
        );
    }

    #[test]
    fn a_publication_pending_or_refused_differs_without_republishing() {
        // The source rotated and the agent has not published it yet (or it was refused).
        assert_eq!(
            judge(Some(&held("old")), 9, Some("new"), recorded("old", 5), None),
            Verdict::Differs
        );
        let nothing = Recorded::default();
        assert_eq!(judge(Some(&held("old")), 9, Some("new"), nothing, None), Verdict::Differs);
    }
}

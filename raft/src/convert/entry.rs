//! Log `Entry`.

use federator_proto::raft as pb;
use federator_proto::raft::entry::Payload;
use openraft::EntryPayload;
use serde_bytes::ByteBuf;

use super::{ConvertError, FromProto, IntoProto, required};
use crate::types::{Command, Entry, LogId, Membership};

impl IntoProto<pb::Entry> for Entry {
    fn into_proto(self) -> pb::Entry {
        let payload = match self.payload {
            EntryPayload::Blank => Payload::Blank(pb::Blank {}),
            EntryPayload::Normal(Command(mut commands)) => {
                if commands.len() == 1 {
                    Payload::Command(commands.pop().map(ByteBuf::into_vec).unwrap_or_default())
                } else {
                    Payload::Commands(pb::CommandBatch {
                        commands: commands.into_iter().map(ByteBuf::into_vec).collect(),
                    })
                }
            }
            EntryPayload::Membership(membership) => Payload::Membership(membership.into_proto()),
        };
        pb::Entry { log_id: Some(self.log_id.into_proto()), payload: Some(payload) }
    }
}

impl FromProto<pb::Entry> for Entry {
    fn from_proto(proto: pb::Entry) -> Result<Self, ConvertError> {
        let log_id = LogId::from_proto(required(proto.log_id, "Entry", "log_id")?)?;
        let payload = match required(proto.payload, "Entry", "payload")? {
            Payload::Blank(pb::Blank {}) => EntryPayload::Blank,
            Payload::Command(bytes) => EntryPayload::Normal(Command::single(bytes)),
            Payload::Commands(batch) => EntryPayload::Normal(Command(
                batch.commands.into_iter().map(ByteBuf::from).collect(),
            )),
            Payload::Membership(membership) => {
                EntryPayload::Membership(Membership::from_proto(membership)?)
            }
        };
        Ok(Entry { log_id, payload })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::convert::membership::tests::representative_memberships;

    /// Entries worth round-tripping: blank, empty and non-empty commands, memberships.
    pub(crate) fn representative_entries() -> Vec<Entry> {
        let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
        let mut entries = vec![
            Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
            Entry { log_id: log_id(1, 2), payload: EntryPayload::Normal(Command::single(vec![])) },
            Entry {
                log_id: log_id(2, 3),
                payload: EntryPayload::Normal(Command::single(vec![0, 1, 255])),
            },
            Entry {
                log_id: log_id(u64::MAX, u64::MAX),
                payload: EntryPayload::Normal(Command::single(vec![7; 4096])),
            },
            // Batches: none, two (one of them empty), many.
            Entry { log_id: log_id(4, 4), payload: EntryPayload::Normal(Command(vec![])) },
            Entry {
                log_id: log_id(4, 5),
                payload: EntryPayload::Normal(Command(vec![
                    ByteBuf::from(vec![1]),
                    ByteBuf::from(vec![]),
                ])),
            },
            Entry {
                log_id: log_id(4, 6),
                payload: EntryPayload::Normal(Command(
                    (0..300u16).map(|i| ByteBuf::from(i.to_be_bytes().to_vec())).collect(),
                )),
            },
        ];
        for (i, membership) in representative_memberships().into_iter().enumerate() {
            entries.push(Entry {
                log_id: log_id(3, 10 + i as u64),
                payload: EntryPayload::Membership(membership),
            });
        }
        entries
    }

    #[test]
    fn entry_round_trips() {
        for entry in representative_entries() {
            let back = Entry::from_proto(entry.clone().into_proto())
                .expect("a converted entry converts back");
            assert_eq!(back, entry);
        }
    }

    #[test]
    fn entry_without_log_id_is_rejected() {
        let error =
            Entry::from_proto(pb::Entry { log_id: None, payload: Some(Payload::Command(vec![1])) })
                .expect_err("an entry needs a log id");
        assert_eq!(error.to_string(), "Entry.log_id is missing");
    }

    #[test]
    fn entry_without_payload_is_rejected() {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), 1).into_proto();
        let error = Entry::from_proto(pb::Entry { log_id: Some(log_id), payload: None })
            .expect_err("an entry needs a payload");
        assert_eq!(error.to_string(), "Entry.payload is missing");
    }
}

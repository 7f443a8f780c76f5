//! Replica-level promises: equal digests at equal applied index, at most one leader per
//! term, sequence numbers that never go back, and no committed cross-domain write.

use std::collections::{BTreeMap, BTreeSet};

use super::history::{CrossDomainAttempt, DigestSample, LeaderSample, SequenceSample};
use super::{Violation, ViolationKind};

/// Flags every applied index at which replicas reported different digests.
#[must_use]
pub fn check_digests(samples: &[DigestSample]) -> Vec<Violation> {
    let mut by_index = BTreeMap::<u64, BTreeMap<&str, BTreeSet<u64>>>::new();
    for sample in samples {
        by_index
            .entry(sample.applied_index)
            .or_default()
            .entry(&sample.digest)
            .or_default()
            .insert(sample.replica);
    }
    by_index
        .into_iter()
        .filter(|(_, digests)| digests.len() > 1)
        .map(|(index, digests)| {
            let listed: Vec<String> = digests
                .iter()
                .map(|(digest, replicas)| format!("{digest} on replicas {replicas:?}"))
                .collect();
            Violation::new(
                ViolationKind::DigestMismatch,
                format!("digests differ at applied index {index}: {}", listed.join(", ")),
            )
        })
        .collect()
}

/// Flags every term that more than one replica reported leading.
#[must_use]
pub fn check_leaders(samples: &[LeaderSample]) -> Vec<Violation> {
    let mut by_term = BTreeMap::<u64, BTreeSet<u64>>::new();
    for sample in samples {
        by_term.entry(sample.term).or_default().insert(sample.replica);
    }
    by_term
        .into_iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .map(|(term, leaders)| {
            Violation::new(
                ViolationKind::TwoLeaders,
                format!("term {term} had leaders {leaders:?}"),
            )
        })
        .collect()
}

/// Flags every sample, in time order, whose sequence is below one the same reader saw
/// earlier for the same trust domain.
#[must_use]
pub fn check_sequences(samples: &[SequenceSample]) -> Vec<Violation> {
    let mut ordered: Vec<&SequenceSample> = samples.iter().collect();
    ordered.sort_by_key(|sample| sample.at);
    let mut highest = BTreeMap::<(u32, &str), &SequenceSample>::new();
    let mut violations = Vec::new();
    for sample in ordered {
        let previous = highest.entry((sample.reader, &sample.trust_domain)).or_insert(sample);
        if sample.sequence < previous.sequence {
            violations.push(Violation::new(
                ViolationKind::SequenceRegression,
                format!(
                    "reader {} saw {} go back from sequence {} (at {}) to {} (at {})",
                    sample.reader,
                    sample.trust_domain,
                    previous.sequence,
                    previous.at,
                    sample.sequence,
                    sample.at
                ),
            ));
        } else {
            *previous = sample;
        }
    }
    violations
}

/// Flags every committed cross-domain write.
#[must_use]
pub fn check_cross_domain(attempts: &[CrossDomainAttempt]) -> Vec<Violation> {
    attempts
        .iter()
        .filter(|attempt| attempt.committed)
        .map(|attempt| {
            Violation::new(
                ViolationKind::CrossDomainCommit,
                format!(
                    "{} claiming trust domain {} was committed",
                    attempt.op, attempt.trust_domain_claimed
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::history::OpId;
    use super::*;

    fn digest(replica: u64, applied_index: u64, digest: &str) -> DigestSample {
        DigestSample { replica, applied_index, digest: digest.to_owned() }
    }

    fn sequence(reader: u32, trust_domain: &str, sequence: u64, at: u64) -> SequenceSample {
        SequenceSample { reader, trust_domain: trust_domain.to_owned(), sequence, at }
    }

    #[test]
    fn equal_digests_at_equal_index_pass() {
        let samples =
            [digest(1, 5, "aa"), digest(2, 5, "aa"), digest(3, 6, "bb"), digest(1, 6, "bb")];
        assert_eq!(check_digests(&samples), vec![]);
    }

    #[test]
    fn digest_mismatch_at_same_index_is_flagged() {
        let samples =
            [digest(1, 5, "aa"), digest(2, 5, "aa"), digest(3, 5, "bb"), digest(3, 6, "cc")];
        let violations = check_digests(&samples);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::DigestMismatch);
        assert!(
            violations[0].message.contains("aa on replicas {1, 2}, bb on replicas {3}"),
            "{}",
            violations[0]
        );
    }

    #[test]
    fn one_leader_per_term_passes_and_two_are_flagged() {
        let mut samples = vec![
            LeaderSample { replica: 1, term: 1, at: 0 },
            LeaderSample { replica: 1, term: 1, at: 5 },
            LeaderSample { replica: 2, term: 2, at: 9 },
        ];
        assert_eq!(check_leaders(&samples), vec![]);
        samples.push(LeaderSample { replica: 3, term: 2, at: 10 });
        let violations = check_leaders(&samples);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::TwoLeaders);
        assert!(violations[0].message.contains("term 2 had leaders {2, 3}"), "{}", violations[0]);
    }

    #[test]
    fn sequences_going_forward_pass_and_going_back_is_flagged() {
        let mut samples = vec![
            sequence(1, "a.org", 1, 0),
            sequence(1, "a.org", 2, 10),
            sequence(1, "a.org", 2, 20),
            sequence(1, "b.org", 1, 15),
            sequence(2, "a.org", 1, 30),
        ];
        assert_eq!(check_sequences(&samples), vec![]);
        samples.push(sequence(1, "a.org", 1, 25));
        let violations = check_sequences(&samples);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::SequenceRegression);
        assert!(
            violations[0].message.contains("from sequence 2 (at 20) to 1 (at 25)"),
            "{}",
            violations[0]
        );
    }

    #[test]
    fn committed_cross_domain_write_is_flagged() {
        let attempt = |op, committed| CrossDomainAttempt {
            op: OpId(op),
            trust_domain_claimed: "b.org".to_owned(),
            committed,
        };
        assert_eq!(check_cross_domain(&[attempt(1, false)]), vec![]);
        let violations = check_cross_domain(&[attempt(1, false), attempt(2, true)]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::CrossDomainCommit);
        assert!(
            violations[0].message.contains("#2 claiming trust domain b.org"),
            "{}",
            violations[0]
        );
    }
}

//! The placement rule: which trusted peer runs an environment, and why. Pure: every
//! candidate's fit comes from the candidate itself (it sizes the environment within what it
//! lends); the rule only compares. Specified in `schemas/cluster.md`.
//!
//! Order, first difference wins: a fit over a refusal; a GPU variant over a CPU one; the
//! preferred resources met over less; least data to move; least loaded; then peer name and
//! id, so the choice never depends on the order answers arrived in.

use std::cmp::Ordering;

use uuid::Uuid;

use crate::model::EnvironmentSpec;
use crate::runtime_supervisor::allocation::{gib, Allocation};

/// Assumed link rate for the ETA of what must move (bytes per second): 1 Gbit/s Ethernet.
pub const ASSUMED_RATE: u64 = 110_000_000;

/// One candidate and what it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The peer's node id.
    pub peer: Uuid,
    /// Its name (as trusted).
    pub peer_name: String,
    /// How it would run the environment, or why it would not.
    pub fit: Result<Offer, String>,
}

/// How a peer would run an environment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Offer {
    /// The variant it would pick.
    pub variant: Option<String>,
    /// CPU cores it would give.
    pub cpus: f64,
    /// Memory it would give, bytes.
    pub memory: u64,
    /// GPUs it would give.
    pub gpus: u32,
    /// Whether that meets the environment's preferred resources (not only the minimum).
    pub preferred_met: bool,
    /// What its running environments hold, as a share of its CPU cores.
    pub load: f64,
    /// Bytes of the workspace it already holds (chunks in its index).
    pub bytes_held: u64,
    /// Bytes that must move to it.
    pub bytes_to_move: u64,
    /// Its notes on the sizing (less than preferred, a variant skipped).
    pub notes: Vec<String>,
}

impl Offer {
    /// Seconds to move what it lacks at [`ASSUMED_RATE`].
    pub fn eta_seconds(&self) -> f64 {
        self.bytes_to_move as f64 / ASSUMED_RATE as f64
    }
}

/// Whether `allocation` meets what `spec` prefers.
pub fn meets_preferred(spec: &EnvironmentSpec, allocation: &Allocation) -> bool {
    let wants = &spec.resources;
    let cpus = wants
        .cpus
        .as_ref()
        .is_none_or(|w| allocation.cpus.is_none_or(|c| c + 1e-9 >= w.preferred()));
    let memory = wants
        .memory
        .as_ref()
        .is_none_or(|w| allocation.memory.is_none_or(|m| m >= w.preferred().0));
    let gpus = wants
        .gpus
        .as_ref()
        .is_none_or(|w| allocation.gpus.len() as u32 >= w.preferred());
    let variant = spec.variants.first().map(|v| &v.name) == allocation.variant.as_ref()
        || spec.variants.is_empty();
    cpus && memory && gpus && variant
}

/// The candidates in the rule's order, and why the first was chosen over the second.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Best first; refusals last.
    pub candidates: Vec<Candidate>,
    /// Why the first: the criterion that set it apart, with the figures.
    pub reason: String,
}

impl Ranking {
    /// The chosen candidate, if any fits.
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.first().filter(|c| c.fit.is_ok())
    }
}

/// Orders `candidates` by the rule.
pub fn rank(mut candidates: Vec<Candidate>) -> Ranking {
    candidates.sort_by(compare);
    let reason = match candidates.first() {
        None => "no trusted peer is online".to_string(),
        Some(first) if first.fit.is_err() => {
            "no trusted peer can run it (each one's answer is listed)".to_string()
        }
        Some(first) if candidates.len() == 1 => {
            format!("{} is the only candidate", first.peer_name)
        }
        Some(first) => {
            // Explained against the first candidate the rule ranks lower; the ones it ties
            // with come after it by name only.
            let tied: Vec<&str> = candidates[1..]
                .iter()
                .take_while(|c| by_rule(first, c) == Ordering::Equal)
                .map(|c| c.peer_name.as_str())
                .collect();
            let tie = match tied.len() {
                0 => String::new(),
                1..=3 => format!("; {} equal by the rule, after it by name", tied.join(", ")),
                n => format!(
                    "; {}, … ({n} in all) equal by the rule, after it by name",
                    tied[..3].join(", ")
                ),
            };
            match candidates.get(1 + tied.len()) {
                Some(other) => format!("{}{tie}", why(first, other)),
                None => format!(
                    "all {} candidates are equal by the rule; {} comes first by name",
                    candidates.len(),
                    first.peer_name
                ),
            }
        }
    };
    Ranking { candidates, reason }
}

fn has_gpu(offer: &Offer) -> bool {
    offer.gpus > 0
}

/// The rule without the tie-break by name (`Less` is better).
fn by_rule(a: &Candidate, b: &Candidate) -> Ordering {
    match (&a.fit, &b.fit) {
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => Ordering::Equal,
        (Ok(x), Ok(y)) => has_gpu(y)
            .cmp(&has_gpu(x))
            .then(y.preferred_met.cmp(&x.preferred_met))
            .then(x.bytes_to_move.cmp(&y.bytes_to_move))
            .then(x.load.total_cmp(&y.load)),
    }
}

/// The rule as a total order (`Less` is better).
fn compare(a: &Candidate, b: &Candidate) -> Ordering {
    by_rule(a, b)
        .then_with(|| a.peer_name.cmp(&b.peer_name))
        .then(a.peer.cmp(&b.peer))
}

/// Why `first` comes before `second`.
fn why(first: &Candidate, second: &Candidate) -> String {
    let (Ok(x), second_fit) = (&first.fit, &second.fit) else {
        return String::new();
    };
    let (a, b) = (&first.peer_name, &second.peer_name);
    let y = match second_fit {
        Err(refusal) => return format!("{a} is the only one that fits ({b}: {refusal})"),
        Ok(y) => y,
    };
    if has_gpu(x) != has_gpu(y) {
        return format!(
            "{a} runs the GPU variant{} with {} GPU{}; {b} would run it on CPU only",
            x.variant
                .as_ref()
                .map(|v| format!(" `{v}`"))
                .unwrap_or_default(),
            x.gpus,
            if x.gpus == 1 { "" } else { "s" }
        );
    }
    if x.preferred_met != y.preferred_met {
        return format!(
            "{a} meets the preferred resources ({}); {b} only the minimum ({})",
            describe(x),
            describe(y)
        );
    }
    if x.bytes_to_move != y.bytes_to_move {
        return format!(
            "{a} has less to receive: {} ({} held already) against {} for {b}",
            gib(x.bytes_to_move),
            gib(x.bytes_held),
            gib(y.bytes_to_move)
        );
    }
    if x.load.total_cmp(&y.load) != Ordering::Equal {
        return format!(
            "{a} is less loaded: {:.0} % of its CPU cores held against {:.0} % on {b}",
            x.load * 100.0,
            y.load * 100.0
        );
    }
    format!("{a} and {b} are equal by the rule; {a} comes first by name")
}

/// `4 CPU cores, 8.0 GiB, 1 GPU`.
pub fn describe(offer: &Offer) -> String {
    let cpus = if offer.cpus.fract() == 0.0 {
        format!("{:.0}", offer.cpus)
    } else {
        format!("{:.2}", offer.cpus)
    };
    format!(
        "{cpus} CPU cores, {}, {} GPU{}",
        gib(offer.memory),
        offer.gpus,
        if offer.gpus == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, offer: Offer) -> Candidate {
        Candidate {
            peer: Uuid::new_v4(),
            peer_name: name.into(),
            fit: Ok(offer),
        }
    }

    fn offer() -> Offer {
        Offer {
            cpus: 2.0,
            memory: 4 << 30,
            preferred_met: true,
            ..Offer::default()
        }
    }

    #[test]
    fn gpu_then_preferred_then_data_then_load_then_name() {
        let gpu = candidate(
            "zeta",
            Offer {
                gpus: 1,
                variant: Some("cuda".into()),
                preferred_met: false,
                bytes_to_move: 1 << 30,
                load: 0.9,
                ..offer()
            },
        );
        let refused = Candidate {
            peer: Uuid::new_v4(),
            peer_name: "alpha".into(),
            fit: Err("needs at least 1 GPU".into()),
        };
        let preferred = candidate(
            "beta",
            Offer {
                bytes_to_move: 1 << 30,
                ..offer()
            },
        );
        let minimum = candidate(
            "gamma",
            Offer {
                preferred_met: false,
                ..offer()
            },
        );
        let ranking = rank(vec![
            refused.clone(),
            minimum.clone(),
            preferred.clone(),
            gpu.clone(),
        ]);
        let names: Vec<&str> = ranking
            .candidates
            .iter()
            .map(|c| c.peer_name.as_str())
            .collect();
        assert_eq!(names, ["zeta", "beta", "gamma", "alpha"]);
        assert!(
            ranking.reason.contains("GPU variant `cuda`"),
            "{}",
            ranking.reason
        );

        let ranking = rank(vec![minimum.clone(), preferred.clone()]);
        assert_eq!(ranking.best().unwrap().peer_name, "beta");
        assert!(
            ranking.reason.contains("meets the preferred"),
            "{}",
            ranking.reason
        );

        let near = candidate(
            "near",
            Offer {
                bytes_held: 1 << 30,
                load: 0.5,
                ..offer()
            },
        );
        let far = candidate(
            "far",
            Offer {
                bytes_to_move: 1 << 30,
                ..offer()
            },
        );
        let ranking = rank(vec![far, near.clone()]);
        assert_eq!(ranking.best().unwrap().peer_name, "near");
        assert!(
            ranking.reason.contains("less to receive"),
            "{}",
            ranking.reason
        );

        let idle = candidate(
            "idle",
            Offer {
                load: 0.1,
                ..offer()
            },
        );
        let busy = candidate(
            "busy",
            Offer {
                load: 0.6,
                ..offer()
            },
        );
        let ranking = rank(vec![busy, idle]);
        assert_eq!(ranking.best().unwrap().peer_name, "idle");
        assert!(ranking.reason.contains("10 %"), "{}", ranking.reason);
    }

    #[test]
    fn only_refusals_choose_nothing() {
        let ranking = rank(vec![Candidate {
            peer: Uuid::new_v4(),
            peer_name: "a".into(),
            fit: Err("accepts no work from peers".into()),
        }]);
        assert!(ranking.best().is_none());
        assert!(rank(Vec::new()).best().is_none());
    }

    #[test]
    fn ties_are_named_and_the_reason_compares_with_the_next_different_one() {
        let offer = |preferred_met| Offer {
            cpus: 1.0,
            preferred_met,
            ..Offer::default()
        };
        let make = |name: &str, preferred| Candidate {
            peer: Uuid::from_u128(name.len() as u128),
            peer_name: name.into(),
            fit: Ok(offer(preferred)),
        };
        let ranking = rank(vec![
            make("n10", true),
            make("n00", false),
            make("n03", true),
        ]);
        assert_eq!(ranking.best().unwrap().peer_name, "n03");
        assert!(
            ranking.reason.starts_with("n03 meets the preferred"),
            "{}",
            ranking.reason
        );
        assert!(
            ranking.reason.contains("n10 equal by the rule"),
            "{}",
            ranking.reason
        );
        let ranking = rank(vec![make("b", true), make("a", true)]);
        assert!(
            ranking.reason.contains("all 2 candidates are equal"),
            "{}",
            ranking.reason
        );
    }
}

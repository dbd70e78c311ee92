//! What the checkers conclude: one [`CheckOutcome`] per checker, gathered in
//! a [`CheckResult`].

use serde::{Deserialize, Serialize};

use super::linearizable::Linearization;

/// A checker's conclusion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The history satisfies the property.
    Pass,
    /// The history violates it (see the violations).
    Fail,
    /// The checker could not decide (budget exhausted, or not enough data).
    /// Never to be read as a pass.
    #[default]
    Unknown,
}

/// One concrete violation found by a checker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// What is wrong, in one or a few lines.
    pub message: String,
    /// The ids of the ops involved (highlighted in the report).
    #[serde(default)]
    pub ops: Vec<u64>,
    /// The watcher involved, if any.
    #[serde(default)]
    pub watcher: Option<u32>,
}

impl Violation {
    /// A violation about ops.
    pub fn ops(message: impl Into<String>, ops: Vec<u64>) -> Violation {
        Violation {
            message: message.into(),
            ops,
            watcher: None,
        }
    }

    /// A violation about a watcher.
    pub fn watch(watcher: u32, message: impl Into<String>) -> Violation {
        Violation {
            message: message.into(),
            ops: Vec::new(),
            watcher: Some(watcher),
        }
    }
}

/// One checker's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// The checker's name (see [`super::checks::names`]).
    pub name: String,
    /// Its conclusion.
    pub verdict: Verdict,
    /// The violations (empty unless `verdict` is `Fail`).
    pub violations: Vec<Violation>,
    /// What was checked, or why it is `Unknown`.
    pub note: String,
}

impl CheckOutcome {
    /// `Pass` if `violations` is empty, else `Fail`.
    pub fn from_violations(name: &str, violations: Vec<Violation>, note: String) -> CheckOutcome {
        CheckOutcome {
            name: name.to_string(),
            verdict: if violations.is_empty() {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            violations,
            note,
        }
    }
}

/// Everything the checkers concluded about one history.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckResult {
    /// One outcome per checker, in the order they ran.
    pub outcomes: Vec<CheckOutcome>,
    /// The linearizability search's details (order found, or the longest
    /// prefix and the op that could not be placed).
    pub linearization: Option<Linearization>,
}

impl CheckResult {
    /// `Fail` if any checker failed, else `Unknown` if any could not decide,
    /// else `Pass`.
    pub fn verdict(&self) -> Verdict {
        let vs = self.outcomes.iter().map(|o| o.verdict);
        if vs.clone().any(|v| v == Verdict::Fail) {
            Verdict::Fail
        } else if vs.clone().any(|v| v == Verdict::Unknown) {
            Verdict::Unknown
        } else {
            Verdict::Pass
        }
    }

    /// The outcome of the checker called `name`.
    pub fn get(&self, name: &str) -> Option<&CheckOutcome> {
        self.outcomes.iter().find(|o| o.name == name)
    }

    /// The verdict of the checker called `name` (`Unknown` if it did not run).
    pub fn verdict_of(&self, name: &str) -> Verdict {
        self.get(name).map_or(Verdict::Unknown, |o| o.verdict)
    }

    /// Every op id named by a violation (for highlighting).
    pub fn flagged_ops(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .outcomes
            .iter()
            .flat_map(|o| o.violations.iter().flat_map(|v| v.ops.iter().copied()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// A plain-text summary: one line per checker, then up to 10
    /// violations each.
    pub fn summary(&self) -> String {
        let mut s = format!("overall: {:?}\n", self.verdict());
        for o in &self.outcomes {
            s.push_str(&format!("{:<22} {:?}  {}\n", o.name, o.verdict, o.note));
            for v in o.violations.iter().take(10) {
                s.push_str(&format!("    - {}", v.message));
                if !v.ops.is_empty() {
                    s.push_str(&format!(" [ops {:?}]", v.ops));
                }
                if let Some(w) = v.watcher {
                    s.push_str(&format!(" [watcher {w}]"));
                }
                s.push('\n');
            }
            if o.violations.len() > 10 {
                s.push_str(&format!("    … {} more\n", o.violations.len() - 10));
            }
        }
        s
    }
}

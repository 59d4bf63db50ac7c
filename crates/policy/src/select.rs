//! Selector matching over identity labels, with Kubernetes' semantics. Selection is decided
//! per label set, so the compiler matches each distinct identity once, not each pod.

use sluice_model::LabelSet;

use crate::ir::{Operator, Requirement, Selector};

// === impl Selector ===

impl Selector {
    /// Whether `labels` satisfy every `match_labels` pair and every requirement.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.match_labels.iter().all(|(key, value)| labels.get(key) == Some(value.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// A selector that matches nothing: what a selector that cannot be lowered becomes, so
    /// an unreadable policy never widens what it selects or allows.
    pub fn nothing() -> Self {
        Selector {
            match_labels: Default::default(),
            match_expressions: vec![Requirement {
                key: sluice_model::labels::NAMESPACE_LABEL.to_owned(),
                operator: Operator::In,
                values: Vec::new(),
            }],
        }
    }
}

// === impl Requirement ===

impl Requirement {
    /// `NotIn` and `DoesNotExist` hold when the key is absent, as in Kubernetes.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => !value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        pairs.iter().copied().collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement { key: key.to_owned(), operator, values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn operators_follow_kubernetes() {
        let web = labels(&[("app", "web")]);
        let bare = labels(&[]);
        let cases = [
            (req("app", Operator::In, &["web", "db"]), true, false),
            (req("app", Operator::NotIn, &["web"]), false, true),
            (req("app", Operator::NotIn, &["db"]), true, true),
            (req("app", Operator::Exists, &[]), true, false),
            (req("app", Operator::DoesNotExist, &[]), false, true),
        ];
        for (r, on_web, on_bare) in cases {
            assert_eq!(r.matches(&web), on_web, "{r:?} on app=web");
            assert_eq!(r.matches(&bare), on_bare, "{r:?} on no labels");
        }
    }

    #[test]
    fn empty_selects_all_and_nothing_selects_none() {
        let web = labels(&[("app", "web")]);
        assert!(Selector::default().matches(&web), "empty selector selects all");
        assert!(!Selector::nothing().matches(&web), "nothing() selects none");
        let sel = Selector {
            match_labels: [("app".to_owned(), "web".to_owned())].into(),
            match_expressions: vec![req("tier", Operator::DoesNotExist, &[])],
        };
        assert!(sel.matches(&web), "labels and expressions both hold");
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "x")])), "an expression fails");
    }
}

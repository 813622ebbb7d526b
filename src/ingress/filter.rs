//! Filters: declarative rules over headers, query and body deciding whether
//! a verified request starts a run. A request that fails them is answered
//! (202 `{"ignored": true, "reason": ...}` by default) and starts nothing.
//!
//! A rule is a table with `all = [rules]`, `any = [rules]`, `not = rule`, or
//! `at = EXPR` (the template language's expressions: `/ref`,
//! `header.X-GitHub-Event`, `query.kind`) with exactly one test: `equals`,
//! `one_of`, `regex`, `exists`, or numeric `gt`/`gte`/`lt`/`lte`.

use crate::config::Problems;
use crate::template::{eval, Expr, Scope};
use serde::Deserialize;
use serde_json::Value;

/// Deepest nesting of `all`/`any`/`not`.
pub const MAX_DEPTH: usize = 16;
/// Most rules in one filter, counting nested ones.
pub const MAX_RULES: usize = 256;

/// A rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    all: Option<Vec<RawRule>>,
    any: Option<Vec<RawRule>>,
    not: Option<Box<RawRule>>,
    at: Option<String>,
    equals: Option<Value>,
    one_of: Option<Vec<Value>>,
    regex: Option<String>,
    exists: Option<bool>,
    gt: Option<f64>,
    gte: Option<f64>,
    lt: Option<f64>,
    lte: Option<f64>,
}

/// A checked rule.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Every rule holds.
    All(Vec<Rule>),
    /// At least one rule holds.
    Any(Vec<Rule>),
    /// The rule does not hold.
    Not(Box<Rule>),
    /// A test on one value.
    Leaf(Expr, Test),
}

/// One test on a value.
#[derive(Debug, Clone)]
pub enum Test {
    /// Equal as JSON; a string also equals a number or boolean of the same text.
    Equals(Value),
    /// Equal to any of these.
    OneOf(Vec<Value>),
    /// A string (or a number's text) the regex finds a match in.
    Regex(regex::Regex),
    /// Present and not null (or, with `false`, absent).
    Exists(bool),
    /// A number (or numeric text) compared.
    Compare(Cmp, f64),
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

impl RawRule {
    /// Checks a rule under `key`.
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<Rule> {
        let mut count = 0;
        self.check_at(key, 0, &mut count, p)
    }

    fn check_at(
        self,
        key: &str,
        depth: usize,
        count: &mut usize,
        p: &mut Problems,
    ) -> Option<Rule> {
        *count += 1;
        if depth > MAX_DEPTH {
            p.add(key, format!("rules nest deeper than {MAX_DEPTH}"));
            return None;
        }
        if *count > MAX_RULES {
            p.add(key, format!("more than {MAX_RULES} rules"));
            return None;
        }
        let tests = [
            self.equals.is_some(),
            self.one_of.is_some(),
            self.regex.is_some(),
            self.exists.is_some(),
            self.gt.is_some(),
            self.gte.is_some(),
            self.lt.is_some(),
            self.lte.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let shapes = [
            self.all.is_some(),
            self.any.is_some(),
            self.not.is_some(),
            self.at.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if shapes != 1 {
            p.add(key, "a rule needs exactly one of all, any, not or at");
            return None;
        }
        let list = |items: Vec<RawRule>, name: &str, count: &mut usize, p: &mut Problems| {
            let before = p.0.len();
            let out: Vec<Rule> = items
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| r.check_at(&format!("{key}.{name}[{i}]"), depth + 1, count, p))
                .collect();
            (p.0.len() == before).then_some(out)
        };
        if tests > 0 && self.at.is_none() {
            p.add(key, "tests (equals, one_of, ...) go with at = \"...\"");
            return None;
        }
        if let Some(items) = self.all {
            return list(items, "all", count, p).map(Rule::All);
        }
        if let Some(items) = self.any {
            return list(items, "any", count, p).map(Rule::Any);
        }
        if let Some(inner) = self.not {
            return inner
                .check_at(&format!("{key}.not"), depth + 1, count, p)
                .map(|r| Rule::Not(Box::new(r)));
        }
        let at = self.at.unwrap_or_default();
        let expr = match Expr::parse(&at) {
            Ok(e) => e,
            Err(e) => {
                p.add(format!("{key}.at"), e);
                return None;
            }
        };
        if tests != 1 {
            p.add(
                key,
                "give exactly one test: equals, one_of, regex, exists, gt, gte, lt or lte",
            );
            return None;
        }
        let test = if let Some(v) = self.equals {
            Test::Equals(v)
        } else if let Some(v) = self.one_of {
            Test::OneOf(v)
        } else if let Some(r) = self.regex {
            match regex::RegexBuilder::new(&r).size_limit(1 << 20).build() {
                Ok(re) => Test::Regex(re),
                Err(e) => {
                    p.add(format!("{key}.regex"), e.to_string());
                    return None;
                }
            }
        } else if let Some(b) = self.exists {
            Test::Exists(b)
        } else if let Some(n) = self.gt {
            Test::Compare(Cmp::Gt, n)
        } else if let Some(n) = self.gte {
            Test::Compare(Cmp::Gte, n)
        } else if let Some(n) = self.lt {
            Test::Compare(Cmp::Lt, n)
        } else if let Some(n) = self.lte {
            Test::Compare(Cmp::Lte, n)
        } else {
            return None;
        };
        Some(Rule::Leaf(expr, test))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    a == b
        || matches!((text(a), text(b)), (Some(x), Some(y)) if x == y && (a.is_string() || b.is_string()))
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Rule {
    /// `Ok(())` when the request passes, else why not (the first failing test).
    pub fn check(&self, scope: &dyn Scope) -> Result<(), String> {
        match self {
            Rule::All(rules) => rules.iter().try_for_each(|r| r.check(scope)),
            Rule::Any(rules) => {
                let mut why = Vec::new();
                for r in rules {
                    match r.check(scope) {
                        Ok(()) => return Ok(()),
                        Err(e) => why.push(e),
                    }
                }
                Err(format!("none of: {}", why.join("; ")))
            }
            Rule::Not(r) => match r.check(scope) {
                Ok(()) => Err("a `not` rule matched".into()),
                Err(_) => Ok(()),
            },
            Rule::Leaf(expr, test) => {
                let v = eval(expr, scope);
                let ok = match (test, &v) {
                    (Test::Exists(want), v) => v.is_some() == *want,
                    (_, None) => false,
                    (Test::Equals(want), Some(v)) => same(v, want),
                    (Test::OneOf(list), Some(v)) => list.iter().any(|w| same(v, w)),
                    (Test::Regex(re), Some(v)) => text(v).is_some_and(|t| re.is_match(&t)),
                    (Test::Compare(cmp, n), Some(v)) => number(v).is_some_and(|x| match cmp {
                        Cmp::Gt => x > *n,
                        Cmp::Gte => x >= *n,
                        Cmp::Lt => x < *n,
                        Cmp::Lte => x <= *n,
                    }),
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!("{expr} {}", describe(test)))
                }
            }
        }
    }
}

fn describe(t: &Test) -> String {
    match t {
        Test::Equals(v) => format!("is not {v}"),
        Test::OneOf(v) => format!("is not one of {}", Value::Array(v.clone())),
        Test::Regex(r) => format!("does not match /{}/", r.as_str()),
        Test::Exists(true) => "is missing".into(),
        Test::Exists(false) => "is present".into(),
        Test::Compare(c, n) => format!(
            "is not {} {n}",
            match c {
                Cmp::Gt => ">",
                Cmp::Gte => ">=",
                Cmp::Lt => "<",
                Cmp::Lte => "<=",
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::MapScope;
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        let raw: RawRule = serde_json::from_value(v).unwrap();
        let mut p = Problems(Vec::new());
        let r = raw.check("f", &mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        r.unwrap()
    }

    fn scope() -> MapScope {
        MapScope {
            main: Some(json!({"ref": "refs/heads/main", "n": 7, "s": "12"})),
            named: vec![],
            keyed: vec![(
                "header".into(),
                vec![("x-github-event".into(), json!("push"))],
            )],
        }
    }

    #[test]
    fn rules_combine() {
        let s = scope();
        let r = rule(json!({"all": [
            {"at": "header.X-GitHub-Event", "equals": "push"},
            {"at": "/ref", "one_of": ["refs/heads/main", "refs/heads/dev"]},
            {"at": "/n", "gte": 7}, {"at": "/s", "lt": 13},
            {"at": "/ref", "regex": "^refs/heads/"},
            {"not": {"at": "/deleted", "exists": true}},
            {"any": [{"at": "/n", "equals": "7"}, {"at": "/x", "exists": true}]},
        ]}));
        assert!(r.check(&s).is_ok());
        let r = rule(json!({"at": "header.x-github-event", "equals": "issues"}));
        let why = r.check(&s).unwrap_err();
        assert!(why.contains("header.x-github-event"), "{why}");
        assert!(rule(json!({"at": "/n", "gt": 7})).check(&s).is_err());
    }

    #[test]
    fn bad_rules_are_config_problems() {
        for bad in [
            json!({"at": "/a"}),
            json!({"at": "/a", "equals": 1, "gt": 2}),
            json!({"at": "nope nope", "exists": true}),
            json!({"at": "/a", "regex": "("}),
            json!({"all": [], "any": []}),
            json!({"equals": 1}),
        ] {
            let raw: RawRule = serde_json::from_value(bad.clone()).unwrap();
            let mut p = Problems(Vec::new());
            assert!(raw.check("f", &mut p).is_none() && !p.0.is_empty(), "{bad}");
        }
    }
}

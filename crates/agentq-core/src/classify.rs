//! Task classes, `long` or `short`, from the rules the Worker Pattern seed describes: keyword
//! lists and a complexity between 0 and 1. Pure: `agentq classify` shows the decision and its
//! reasons, and the router (the pool issue) acts on it.
//!
//! The decision, in order:
//! 1. A class given with the task stands.
//! 2. Complexity at or above `high` (0.8) is always long.
//! 3. Complexity at or below `low` (0.3) is short, unless a long keyword appears.
//! 4. Between them: a long keyword makes it long, else a short keyword makes it short, else the
//!    complexity decides against `medium` (0.5).
//!
//! The complexity is the task's own when given, else estimated from the prompt: long keywords
//! raise it, short ones lower it, and so do the prompt's size and scope words ("entire",
//! "codebase", ...). Keywords match whole words in any case and their usual endings
//! (`implement` matches "implementing", `migrate` "migration"); a phrase matches its words in
//! order with up to two words between (`analyze codebase` matches "analyze the large codebase").

use std::fmt;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Long,
    Short,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Long => "long",
            Class::Short => "short",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Class, String> {
        match s {
            "long" => Ok(Class::Long),
            "short" => Ok(Class::Short),
            other => Err(format!("unknown class {other:?}: expected long or short")),
        }
    }
}

/// The rules, as `[classify]` in agentq.toml sets them.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub long_keywords: Vec<String>,
    pub short_keywords: Vec<String>,
    /// At or above: always long.
    pub high: f64,
    /// Between `low` and `high`, with no keyword, at or above this is long.
    pub medium: f64,
    /// At or below: short unless a long keyword appears.
    pub low: f64,
}

impl Default for Rules {
    fn default() -> Self {
        let words = |list: &[&str]| list.iter().map(|w| w.to_string()).collect();
        Rules {
            long_keywords: words(&[
                "implement",
                "refactor",
                "analyze codebase",
                "migrate",
                "redesign",
                "architecture",
                "comprehensive",
                "extensive",
                "large-scale",
            ]),
            short_keywords: words(&[
                "fix", "update", "add", "remove", "delete", "rename", "quick",
            ]),
            high: 0.8,
            medium: 0.5,
            low: 0.3,
        }
    }
}

/// Words that say a task reaches far.
const SCOPE_WORDS: &[&str] = &[
    "entire",
    "whole",
    "all",
    "every",
    "codebase",
    "system",
    "across",
    "end-to-end",
    "full",
];

/// A class and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub class: Class,
    pub complexity: f64,
    /// Whether the complexity was given with the task (else estimated).
    pub complexity_given: bool,
    pub long_keywords: Vec<String>,
    pub short_keywords: Vec<String>,
    /// The rule that decided, in words.
    pub reason: String,
}

/// Classifies `prompt` by `rules`; `class` and `complexity` are what the task was given, if any.
pub fn classify(
    prompt: &str,
    rules: &Rules,
    class: Option<Class>,
    complexity: Option<f64>,
) -> Verdict {
    let words = words(prompt);
    let long = matches(&words, &rules.long_keywords);
    let short = matches(&words, &rules.short_keywords);
    let complexity_given = complexity.is_some();
    let c = complexity
        .map(|c| c.clamp(0.0, 1.0))
        .unwrap_or_else(|| estimate(&words, prompt, long.len(), short.len()));
    let (class, reason) = match class {
        Some(class) => (class, "the class was given with the task".to_string()),
        None if c >= rules.high => (
            Class::Long,
            format!("complexity {c:.2} is at or above {:.2}", rules.high),
        ),
        None if c <= rules.low && long.is_empty() => (
            Class::Short,
            format!(
                "complexity {c:.2} is at or below {:.2} and no long keyword appears",
                rules.low
            ),
        ),
        None if !long.is_empty() => (Class::Long, format!("long keyword {}", quoted(&long))),
        None if !short.is_empty() => (
            Class::Short,
            format!("short keyword {}, no long one", quoted(&short)),
        ),
        None if c >= rules.medium => (
            Class::Long,
            format!(
                "no keyword; complexity {c:.2} is at or above {:.2}",
                rules.medium
            ),
        ),
        None => (
            Class::Short,
            format!("no keyword; complexity {c:.2} is below {:.2}", rules.medium),
        ),
    };
    Verdict {
        class,
        complexity: (c * 100.0).round() / 100.0,
        complexity_given,
        long_keywords: long,
        short_keywords: short,
        reason,
    }
}

/// The prompt's words, lower case, split on anything but letters, digits, `-` and `_`.
fn words(prompt: &str) -> Vec<String> {
    prompt
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The keywords (or phrases) of `list` that appear in `words`, in list order.
fn matches(words: &[String], list: &[String]) -> Vec<String> {
    list.iter()
        .filter(|k| phrase_in(words, k))
        .cloned()
        .collect()
}

/// Whether the words of `phrase` appear in order, each within two words of the one before.
fn phrase_in(words: &[String], phrase: &str) -> bool {
    let parts: Vec<String> = phrase.split_whitespace().map(str::to_lowercase).collect();
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    (0..words.len()).any(|start| {
        if !word_matches(&words[start], first) {
            return false;
        }
        let mut at = start;
        rest.iter().all(|part| {
            let window = at + 1..(at + 4).min(words.len());
            match window.clone().find(|&i| word_matches(&words[i], part)) {
                Some(i) => {
                    at = i;
                    true
                }
                None => false,
            }
        })
    })
}

/// A word matches a keyword when it is the keyword or the keyword with a usual ending.
fn word_matches(word: &str, keyword: &str) -> bool {
    const ENDINGS: &[&str] = &[
        "s", "es", "ed", "d", "ing", "ion", "ions", "ation", "ations", "er", "ers", "ment",
        "ments", "ive", "ly",
    ];
    if word == keyword {
        return true;
    }
    // "migrate" -> "migrating", "migration": a final e gives way to the ending.
    let stems = [keyword, keyword.strip_suffix('e').unwrap_or(keyword)];
    stems.iter().any(|stem| {
        word.strip_prefix(stem)
            .is_some_and(|ending| ENDINGS.contains(&ending))
    })
}

/// A complexity from the prompt alone, between 0 and 1.
fn estimate(words: &[String], prompt: &str, long: usize, short: usize) -> f64 {
    let mut c: f64 = 0.3;
    c += 0.15 * long.min(3) as f64;
    c -= 0.1 * short.min(2) as f64;
    let scope = words
        .iter()
        .filter(|w| SCOPE_WORDS.contains(&w.as_str()))
        .count();
    c += 0.1 * scope.min(2) as f64;
    c += match words.len() {
        0..=50 => 0.0,
        51..=200 => 0.1,
        _ => 0.2,
    };
    // A list of steps or requirements.
    let lines = prompt.lines().filter(|l| !l.trim().is_empty()).count();
    if lines >= 5 {
        c += 0.1;
    }
    c.clamp(0.0, 1.0)
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(prompt: &str) -> Class {
        classify(prompt, &Rules::default(), None, None).class
    }

    #[test]
    fn the_seeds_examples_classify_as_the_seed_says() {
        for long in [
            "Implement comprehensive authentication system",
            "Refactor entire codebase",
            "Migrate to new framework",
            "Analyze large codebase for patterns",
            "Implement OAuth2 authentication with JWT",
            "Redesign the architecture of the billing service",
            "Implement feature",
            "Implement complex feature",
        ] {
            assert_eq!(class_of(long), Class::Long, "{long}");
        }
        for short in [
            "Fix login button bug",
            "Update README",
            "Add code comment",
            "Fix the login bug",
            "Rename the config flag",
            "Quick question about the build",
            "Quick fix",
        ] {
            assert_eq!(class_of(short), Class::Short, "{short}");
        }
    }

    #[test]
    fn complexity_thresholds_decide_as_documented() {
        let r = Rules::default();
        // High complexity is long whatever the words.
        let v = classify("Fix typo", &r, None, Some(0.9));
        assert_eq!((v.class, v.complexity_given), (Class::Long, true));
        assert!(v.reason.contains("at or above 0.80"), "{}", v.reason);
        // Low complexity is short unless a long keyword appears.
        assert_eq!(
            classify("Look at this", &r, None, Some(0.1)).class,
            Class::Short
        );
        assert_eq!(
            classify("Implement it", &r, None, Some(0.1)).class,
            Class::Long
        );
        // In between: long keywords win over short ones; with none, `medium` decides.
        let both = classify("Fix and refactor the parser", &r, None, Some(0.5));
        assert_eq!(both.class, Class::Long);
        assert_eq!(both.short_keywords, ["fix"]);
        assert_eq!(
            classify("Look at this", &r, None, Some(0.6)).class,
            Class::Long
        );
        assert_eq!(
            classify("Look at this", &r, None, Some(0.4)).class,
            Class::Short
        );
        // A given class stands.
        assert_eq!(
            classify("Implement everything", &r, Some(Class::Short), None).class,
            Class::Short
        );
    }

    #[test]
    fn keywords_match_words_their_endings_and_phrases_with_gaps() {
        let w = |s: &str| words(s);
        assert!(phrase_in(&w("Implementing the parser"), "implement"));
        assert!(phrase_in(&w("the migration plan"), "migrate"));
        assert!(phrase_in(
            &w("Analyze the large codebase"),
            "analyze codebase"
        ));
        assert!(!phrase_in(
            &w("analyze one two three four codebase"),
            "analyze codebase"
        ));
        assert!(
            !phrase_in(&w("address the prefix"), "add"),
            "no prefix matches"
        );
        assert!(!phrase_in(&w("fixture"), "fix"));
        assert!(phrase_in(&w("a large-scale change"), "large-scale"));
        assert!(phrase_in(&w("FIXES"), "fix"));
    }

    #[test]
    fn custom_rules_are_used() {
        let r = Rules {
            long_keywords: vec!["audit".into()],
            short_keywords: vec!["typo".into()],
            ..Rules::default()
        };
        assert_eq!(
            classify("audit the logs", &r, None, None).class,
            Class::Long
        );
        assert_eq!(classify("implement it", &r, None, None).class, Class::Short);
    }

    #[test]
    fn estimates_stay_between_zero_and_one_and_grow_with_scope_and_size() {
        let r = Rules::default();
        let small = classify("look at the parser", &r, None, None).complexity;
        let broad = classify("look at the entire codebase", &r, None, None).complexity;
        let long_text = format!("look at {}", "the parser again ".repeat(80));
        let big = classify(&long_text, &r, None, None).complexity;
        assert!(small < broad && small < big, "{small} {broad} {big}");
        let max = classify(
            &"implement refactor migrate entire whole system ".repeat(60),
            &r,
            None,
            None,
        );
        assert!(max.complexity <= 1.0 && max.class == Class::Long);
        let min = classify("fix remove", &r, None, None);
        assert!(min.complexity >= 0.0 && min.class == Class::Short);
    }
}

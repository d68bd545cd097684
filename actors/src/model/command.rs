//! A command in `environment.yaml`: a list of words, or one line split as a shell splits it
//! (quotes and backslashes) without running a shell, as docker-compose and devcontainer.json
//! accept. `$PORT` and `$BASE_PATH` stay as written; aienv expands them.

use serde::de::{self, Deserializer, SeqAccess, Visitor};

const EXPECTED: &str =
    "a command: a list of words ([python3, -m, http.server, $PORT]) or one line (python3 -m http.server $PORT)";

/// Splits `line` into words as a POSIX shell would, with no expansion; refuses shell syntax
/// (pipes, redirections, `;`, `&`, backquotes) and unclosed quotes, saying how to write them.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(unclosed(line, '\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(unclosed(line, '"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(unclosed(line, '"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => word.push(c),
                }
            }
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '`' => {
                return Err(format!(
                    "`{c}` in `{line}` is shell syntax, which a command does not run: set `shell: true` to run the line with sh -c, or quote the character"
                ))
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn unclosed(line: &str, quote: char) -> String {
    format!(
        "`{line}` has an unclosed {quote} quote: close it, or write the command as a list of words"
    )
}

/// Deserializes a command from a list of words or one line.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Words;
    impl<'de> Visitor<'de> for Words {
        type Value = Vec<String>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str(EXPECTED)
        }

        fn visit_str<E: de::Error>(self, line: &str) -> Result<Vec<String>, E> {
            split_words(line).map_err(E::custom)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut words = Vec::new();
            while let Some(word) = seq.next_element::<String>()? {
                words.push(word);
            }
            Ok(words)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
            Ok(Vec::new())
        }
    }
    deserializer.deserialize_any(Words)
}

/// The JSON Schema of a command: a string or an array of strings.
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": EXPECTED,
        "oneOf": [
            {"type": "string", "description": "One line, split into words as a POSIX shell splits them (quotes, backslashes), without expansion or shell syntax."},
            {"type": "array", "items": {"type": "string"}}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn lines_split_as_a_shell_would() {
        let cases: &[(&str, &[&str])] = &[
            (
                "python3 -m http.server $PORT",
                &["python3", "-m", "http.server", "$PORT"],
            ),
            ("  a   b\t c ", &["a", "b", "c"]),
            (
                "echo 'two words' \"and \\\"more\\\"\"",
                &["echo", "two words", "and \"more\""],
            ),
            ("a\\ b c\\\\d", &["a b", "c\\d"]),
            ("x='' y\"\"", &["x=", "y"]),
            ("\"$BASE_PATH\"/lab", &["$BASE_PATH/lab"]),
            ("", &[]),
        ];
        for (line, words) in cases {
            assert_eq!(split_words(line).unwrap(), *words, "{line}");
        }
        for bad in [
            "echo 'open",
            "echo \"open",
            "a | b",
            "a && b",
            "a > out",
            "a; b",
            "`x`",
        ] {
            assert!(split_words(bad).is_err(), "{bad}");
        }
        assert!(split_words("a | b").unwrap_err().contains("shell: true"));
    }
}

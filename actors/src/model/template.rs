//! `template` in `workspace.yaml`: the workspace is a template others start from, with
//! parameters filled in where `{{ name }}` appears.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::{validate_relative_path, ValidationErrors};

/// Most parameters.
const MAX_PARAMETERS: usize = 32;
/// Longest value.
const MAX_VALUE: usize = 200;

/// A workspace offered as a template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Values asked for when a workspace is made from it (`--set name=value`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<TemplateParameter>,
    /// Workspace-relative files (besides `workspace.yaml` and every `environment.yaml`,
    /// always filled) whose `{{ name }}` placeholders are filled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// One parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateParameter {
    /// Its name: lower-case letters, digits and `_`, starting with a letter.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The value when none is given (without one, a value must be given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// The only values allowed, when the list is not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

/// Whether `value` may be filled in: it lands inside YAML and file text, so only letters,
/// digits, spaces and `. _ - / @ + = ,` (at most 200 characters).
pub fn valid_value(value: &str) -> bool {
    value.chars().count() <= MAX_VALUE
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || " ._-/@+=,".contains(c))
}

fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl TemplateSpec {
    /// Checks names, values and paths.
    pub fn validate(&self, errors: &mut ValidationErrors) {
        if self.parameters.len() > MAX_PARAMETERS {
            errors.add(
                "template.parameters",
                format!("at most {MAX_PARAMETERS} parameters"),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, parameter) in self.parameters.iter().enumerate() {
            let field = |f: &str| format!("template.parameters[{index}].{f}");
            if !valid_name(&parameter.name) {
                errors.add(
                    field("name"),
                    "lower-case letters, digits and `_`, starting with a letter (64 at most)",
                );
            }
            if !seen.insert(&parameter.name) {
                errors.add(
                    field("name"),
                    format!("`{}` is listed twice", parameter.name),
                );
            }
            errors.check_len(&field("description"), &parameter.description, 1000);
            for value in parameter.default.iter().chain(&parameter.choices) {
                if !valid_value(value) {
                    errors.add(
                        field("default"),
                        format!("`{value}`: values hold letters, digits, spaces and . _ - / @ + = , only"),
                    );
                }
            }
            if let (Some(default), false) = (&parameter.default, parameter.choices.is_empty()) {
                if !parameter.choices.contains(default) {
                    errors.add(field("default"), "is not one of `choices`");
                }
            }
        }
        for (index, path) in self.files.iter().enumerate() {
            if let Err(message) = validate_relative_path(path) {
                errors.add(format!("template.files[{index}]"), message);
            }
        }
    }

    /// Every parameter's value: the one given, else its default. Errors name the parameter.
    pub fn fill(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, String> {
        if let Some(unknown) = given
            .keys()
            .find(|k| !self.parameters.iter().any(|p| &p.name == *k))
        {
            let known: Vec<&str> = self.parameters.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "the template has no parameter `{unknown}`; it has: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        let mut values = BTreeMap::new();
        for parameter in &self.parameters {
            let value = match (given.get(&parameter.name), &parameter.default) {
                (Some(value), _) => value.clone(),
                (None, Some(default)) => default.clone(),
                (None, None) => {
                    return Err(format!(
                        "the template's parameter `{}` needs a value (`--set {}=...`){}",
                        parameter.name,
                        parameter.name,
                        if parameter.description.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", parameter.description)
                        }
                    ))
                }
            };
            if !valid_value(&value) {
                return Err(format!(
                    "`{value}` for `{}`: values hold letters, digits, spaces and . _ - / @ + = , only (200 at most)",
                    parameter.name
                ));
            }
            if !parameter.choices.is_empty() && !parameter.choices.contains(&value) {
                return Err(format!(
                    "`{value}` for `{}` is not one of {}",
                    parameter.name,
                    parameter.choices.join(", ")
                ));
            }
            values.insert(parameter.name.clone(), value);
        }
        Ok(values)
    }
}

/// `text` with every `{{ name }}` (spaces optional) of a known parameter replaced; other
/// braces are left alone.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        match values.get(name) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TemplateSpec {
        TemplateSpec {
            parameters: vec![
                TemplateParameter {
                    name: "python".into(),
                    description: "interpreter".into(),
                    default: Some("3.11".into()),
                    choices: vec!["3.10".into(), "3.11".into(), "3.12".into()],
                },
                TemplateParameter {
                    name: "model".into(),
                    description: String::new(),
                    default: None,
                    choices: Vec::new(),
                },
            ],
            files: Vec::new(),
        }
    }

    #[test]
    fn values_fill_defaults_and_errors_name_the_parameter() {
        let given = BTreeMap::from([("model".to_string(), "meta/llama-3".to_string())]);
        let values = spec().fill(&given).unwrap();
        assert_eq!(values["python"], "3.11");
        let missing = spec().fill(&BTreeMap::new()).unwrap_err();
        assert!(missing.contains("`model` needs a value"), "{missing}");
        let bad = BTreeMap::from([
            ("model".to_string(), "x".to_string()),
            ("python".to_string(), "2.7".to_string()),
        ]);
        assert!(spec().fill(&bad).unwrap_err().contains("not one of"));
        let injected = BTreeMap::from([("model".to_string(), "x\"\nsandbox: off".to_string())]);
        assert!(spec().fill(&injected).unwrap_err().contains("only"));
        let unknown = BTreeMap::from([("gpu".to_string(), "1".to_string())]);
        assert!(spec()
            .fill(&unknown)
            .unwrap_err()
            .contains("no parameter `gpu`"));
    }

    #[test]
    fn placeholders_are_replaced_and_others_left() {
        let values = BTreeMap::from([("python".to_string(), "3.12".to_string())]);
        assert_eq!(
            substitute("v: {{python}} / {{ python }} / {{ other }} / {{", &values),
            "v: 3.12 / 3.12 / {{ other }} / {{"
        );
    }
}

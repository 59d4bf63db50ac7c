//! Kubernetes' name and label syntax rules (apimachinery `validation.IsQualifiedName` and
//! friends), written as plain character checks. Each returns the reason a value is rejected,
//! worded like the API server's message, so users recognise it.

/// Longest DNS-1123 label, and longest name part of a label key or label value.
const MAX_LABEL_LEN: usize = 63;
/// Longest DNS-1123 subdomain, including the prefix of a label key.
const MAX_SUBDOMAIN_LEN: usize = 253;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case \
    alphanumeric characters or '-', and must start and end with an alphanumeric character \
    (e.g. 'my-name', or '123-abc')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
    (e.g. 'example.com')";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', \
    and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or \
    '123-abc')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric \
    characters, '-', '_' or '.', and must start and end with an alphanumeric character \
    (e.g. 'MyValue', or 'my_value', or '12345')";

/// Checks a DNS-1123 label: 1 to 63 characters of `[a-z0-9-]`, alphanumeric at both ends.
/// Namespace names, container names and `metadata.namespace` follow this rule.
pub fn validate_dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    check_max_len(value, MAX_LABEL_LEN)?;
    if !is_dns1123_label(value) {
        return Err(DNS1123_LABEL_MSG.to_owned());
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain: up to 253 characters, DNS-1123 labels joined by `.`.
/// Pod names, node names and label key prefixes follow this rule.
pub fn validate_dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    check_max_len(value, MAX_SUBDOMAIN_LEN)?;
    // Kubernetes' regex bounds only the whole subdomain, not each dot-separated part.
    if !value.split('.').all(is_dns1123_label) {
        return Err(DNS1123_SUBDOMAIN_MSG.to_owned());
    }
    Ok(())
}

/// Checks a label key (a "qualified name"): an optional DNS-1123 subdomain prefix and `/`,
/// then a name part of 1 to 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        None => (None, key),
        Some((_, rest)) if rest.contains('/') => {
            return Err(format!(
                "a qualified name {QUALIFIED_NAME_MSG}, with an optional DNS subdomain prefix \
                 and '/' (e.g. 'example.com/MyName')"
            ));
        }
        Some((prefix, name)) => (Some(prefix), name),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".to_owned());
        }
        validate_dns1123_subdomain(prefix).map_err(|reason| format!("prefix part {reason}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".to_owned());
    }
    check_max_len(name, MAX_LABEL_LEN).map_err(|reason| format!("name part {reason}"))?;
    if !is_qualified_name_part(name) {
        return Err(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    Ok(())
}

/// Checks a label value: empty, or up to 63 characters following the label key name rule.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    check_max_len(value, MAX_LABEL_LEN)?;
    if !value.is_empty() && !is_qualified_name_part(value) {
        return Err(LABEL_VALUE_MSG.to_owned());
    }
    Ok(())
}

fn check_max_len(value: &str, max: usize) -> Result<(), String> {
    // Kubernetes counts bytes; anything non-ASCII is rejected by the character rules anyway.
    if value.len() > max {
        return Err(format!("must be no more than {max} characters (it has {})", value.len()));
    }
    Ok(())
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_dns1123_label(value: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: char| edge(c) || c == '-';
    has_shape(value, edge, inner)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(value: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    let inner = |c: char| edge(c) || matches!(c, '-' | '_' | '.');
    has_shape(value, edge, inner)
}

/// True when `value` is non-empty, starts and ends with an `edge` character and every
/// character is an `inner` one (which includes the `edge` ones).
fn has_shape(value: &str, edge: impl Fn(char) -> bool, inner: impl Fn(char) -> bool) -> bool {
    let (Some(first), Some(last)) = (value.chars().next(), value.chars().next_back()) else {
        return false;
    };
    edge(first) && edge(last) && value.chars().all(inner)
}

const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric \
    characters or '-', start with an alphabetic character, and end with an alphanumeric \
    character (e.g. 'my-name', or 'abc-123')";

/// Checks a DNS-1035 label: a DNS-1123 label that starts with a letter. Service names follow
/// this rule, so that they can be DNS names on their own.
pub fn validate_dns1035_label(value: &str) -> Result<(), String> {
    validate_dns1123_label(value).map_err(|_| DNS1035_LABEL_MSG.to_owned())?;
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(DNS1035_LABEL_MSG.to_owned());
    }
    Ok(())
}

/// Checks an IANA service name (RFC 6335), what a named port is: 1 to 15 characters of
/// `[a-z0-9-]`, at least one letter, no `-` at either end and no `--`.
pub fn validate_iana_svc_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 15 {
        return Err("must be no more than 15 characters".to_owned());
    }
    if !value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_owned());
    }
    if value.contains("--") {
        return Err("must not contain consecutive hyphens".to_owned());
    }
    if !value.chars().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)".to_owned());
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("must not begin or end with a hyphen".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(what: &str, validate: fn(&str) -> Result<(), String>, cases: &[(&str, Result<(), &str>)]) {
        for (input, expected) in cases {
            let got = validate(input);
            match expected {
                Ok(()) => assert!(got.is_ok(), "{what} {input:?}: expected valid, got {got:?}"),
                Err(fragment) => {
                    let message = got.err().unwrap_or_default();
                    assert!(message.contains(fragment), "{what} {input:?}: expected an error containing {fragment:?}, got {message:?}");
                }
            }
        }
    }

    #[test]
    fn label_keys() {
        let n63 = "a".repeat(63);
        let n64 = "a".repeat(64);
        let prefixed63 = format!("example.com/{n63}");
        let prefixed64 = format!("example.com/{n64}");
        let prefix253 = format!("{}/x", vec!["a".repeat(63); 4].join(".").get(..253).unwrap_or(""));
        let prefix254 = format!("{}/x", "a".repeat(254));
        check(
            "label key",
            validate_label_key,
            &[
                ("app", Ok(())),
                ("App_Name.v-1", Ok(())),
                ("a", Ok(())),
                ("9", Ok(())),
                ("app.kubernetes.io/name", Ok(())),
                ("k8s.io/Name", Ok(())),
                (&n63, Ok(())),
                (&n64, Err("name part must be no more than 63 characters (it has 64)")),
                (&prefixed63, Ok(())),
                (&prefixed64, Err("name part must be no more than 63 characters")),
                (&prefix253, Ok(())),
                (&prefix254, Err("prefix part must be no more than 253 characters")),
                ("", Err("name part must be non-empty")),
                ("-bad", Err("name part must consist of alphanumeric characters")),
                ("bad-", Err("name part must consist of alphanumeric characters")),
                ("_bad", Err("name part must consist")),
                ("has space", Err("name part must consist")),
                ("é", Err("name part must consist")),
                ("Example.com/name", Err("prefix part a lowercase RFC 1123 subdomain")),
                ("example..com/name", Err("prefix part a lowercase RFC 1123 subdomain")),
                ("-example.com/name", Err("prefix part a lowercase RFC 1123 subdomain")),
                ("/name", Err("prefix part must be non-empty")),
                ("example.com/", Err("name part must be non-empty")),
                ("a/b/c", Err("a qualified name must consist of")),
                ("k8s:app", Err("name part must consist")),
            ],
        );
    }

    #[test]
    fn label_values() {
        let v63 = "v".repeat(63);
        let v64 = "v".repeat(64);
        check(
            "label value",
            validate_label_value,
            &[
                ("", Ok(())),
                ("web", Ok(())),
                ("My_Value.1-2", Ok(())),
                ("12345", Ok(())),
                (&v63, Ok(())),
                (&v64, Err("must be no more than 63 characters (it has 64)")),
                ("-web", Err("a valid label must be an empty string or consist of")),
                ("web.", Err("a valid label must be an empty string")),
                ("a/b", Err("a valid label must be an empty string")),
                ("two words", Err("a valid label must be an empty string")),
            ],
        );
    }

    #[test]
    fn dns1123_labels() {
        let l63 = "a".repeat(63);
        let l64 = "a".repeat(64);
        check(
            "DNS-1123 label",
            validate_dns1123_label,
            &[
                ("default", Ok(())),
                ("kube-system", Ok(())),
                ("0abc", Ok(())),
                (&l63, Ok(())),
                (&l64, Err("must be no more than 63 characters")),
                ("", Err("must not be empty")),
                ("Default", Err("a lowercase RFC 1123 label")),
                ("a.b", Err("a lowercase RFC 1123 label")),
                ("-a", Err("a lowercase RFC 1123 label")),
                ("a-", Err("a lowercase RFC 1123 label")),
                ("a_b", Err("a lowercase RFC 1123 label")),
            ],
        );
    }

    #[test]
    fn dns1123_subdomains() {
        let long_part = "a".repeat(100);
        let s253 = "a".repeat(253);
        let s254 = "a".repeat(254);
        check(
            "DNS-1123 subdomain",
            validate_dns1123_subdomain,
            &[
                ("web", Ok(())),
                ("web-0.shop", Ok(())),
                ("example.com", Ok(())),
                (&long_part, Ok(())),
                (&s253, Ok(())),
                (&s254, Err("must be no more than 253 characters (it has 254)")),
                ("", Err("must not be empty")),
                ("Web", Err("a lowercase RFC 1123 subdomain")),
                ("web.", Err("a lowercase RFC 1123 subdomain")),
                (".web", Err("a lowercase RFC 1123 subdomain")),
                ("a..b", Err("a lowercase RFC 1123 subdomain")),
                ("a.-b", Err("a lowercase RFC 1123 subdomain")),
                ("web_1", Err("a lowercase RFC 1123 subdomain")),
            ],
        );
    }
}

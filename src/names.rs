//! Kubernetes naming rules, checked the way the API server checks them: DNS labels
//! (namespaces), DNS subdomains (most object names, service accounts), label keys and
//! values. Identities and the config translation both use these, so a name that could not
//! exist in a cluster (`..`, `a/sa/b`, `Shop!`) is refused everywhere it enters.
//!
//! Each check returns a [`NameError`] that reads as the end of a sentence about the value
//! (`"Shop" must be lowercase letters, ...`), something a user can act on.

/// Why a name is not valid; displays as the rest of a sentence naming the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The value is empty.
    #[error("is empty")]
    Empty,
    /// Longer than the limit (given).
    #[error("is longer than {0} characters")]
    TooLong(usize),
    /// A character a DNS label cannot hold.
    #[error("must be lowercase letters, digits and '-' only")]
    NotDnsCharacters,
    /// A character a label name or value cannot hold.
    #[error("may contain only letters, digits, '-', '_' and '.'")]
    NotLabelCharacters,
    /// Starts or ends with something other than a letter or digit.
    #[error("must start and end with a letter or digit")]
    BadEdge,
    /// A DNS subdomain with an empty dot-separated part.
    #[error("must not contain empty parts ('..', or a leading or trailing '.')")]
    EmptyPart,
    /// A label key with a prefix and nothing after the '/'.
    #[error("has an empty name")]
    EmptyName,
    /// A dot-separated part of a DNS subdomain is not a DNS label.
    #[error("part {part:?} {reason}")]
    Part {
        /// The offending part, as written.
        part: String,
        /// Why it is not a DNS label.
        reason: Box<NameError>,
    },
    /// The prefix (before '/') of a label key is not a DNS subdomain.
    #[error("prefix {prefix:?} {reason}")]
    Prefix {
        /// The prefix, as written (without the '/').
        prefix: String,
        /// Why it is not a DNS subdomain.
        reason: Box<NameError>,
    },
    /// The name (after the prefix) of a label key is not valid.
    #[error("name {name:?} {reason}")]
    Name {
        /// The name part, as written.
        name: String,
        /// Why it is not valid.
        reason: Box<NameError>,
    },
}

/// Longest DNS label (RFC 1123).
pub const MAX_LABEL: usize = 63;
/// Longest DNS subdomain (RFC 1123).
pub const MAX_SUBDOMAIN: usize = 253;

/// An RFC 1123 DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a
/// letter or digit (namespace names).
pub fn check_dns_label(value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty);
    }
    if value.len() > MAX_LABEL {
        return Err(NameError::TooLong(MAX_LABEL));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !value.chars().all(ok_char) {
        return Err(NameError::NotDnsCharacters);
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(NameError::BadEdge);
    }
    Ok(())
}

/// An RFC 1123 DNS subdomain: at most 253 characters of dot-separated DNS labels (object
/// names, service account names).
pub fn check_dns_subdomain(value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty);
    }
    if value.len() > MAX_SUBDOMAIN {
        return Err(NameError::TooLong(MAX_SUBDOMAIN));
    }
    for part in value.split('.') {
        check_dns_label(part).map_err(|reason| {
            if part.is_empty() {
                NameError::EmptyPart
            } else {
                NameError::Part {
                    part: part.to_owned(),
                    reason: Box::new(reason),
                }
            }
        })?;
    }
    Ok(())
}

/// A label or annotation name part, and label values: at most 63 characters of letters,
/// digits, '-', '_' and '.', starting and ending with a letter or digit.
fn check_qualified_part(value: &str) -> Result<(), NameError> {
    if value.len() > MAX_LABEL {
        return Err(NameError::TooLong(MAX_LABEL));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !value.chars().all(ok_char) {
        return Err(NameError::NotLabelCharacters);
    }
    let edge_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if !(edge_ok(value.chars().next()) && edge_ok(value.chars().last())) {
        return Err(NameError::BadEdge);
    }
    Ok(())
}

/// A label key: an optional DNS-subdomain prefix and '/', then a name of at most 63
/// characters.
pub fn check_label_key(key: &str) -> Result<(), NameError> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix).map_err(|reason| NameError::Prefix {
            prefix: prefix.to_owned(),
            reason: Box::new(reason),
        })?;
    }
    if name.is_empty() {
        return Err(NameError::EmptyName);
    }
    check_qualified_part(name).map_err(|reason| NameError::Name {
        name: name.to_owned(),
        reason: Box::new(reason),
    })
}

/// A label value: empty, or at most 63 characters as for a key's name.
pub fn check_label_value(value: &str) -> Result<(), NameError> {
    check_qualified_part(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("shop").is_ok());
        assert!(check_dns_label("a-1").is_ok());
        for bad in [
            "",
            "Shop",
            "shop!",
            "-a",
            "a-",
            "a.b",
            "..",
            &"a".repeat(64),
        ] {
            assert!(check_dns_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_subdomains() {
        assert!(check_dns_subdomain("order").is_ok());
        assert!(check_dns_subdomain("order.v2").is_ok());
        for bad in [
            "",
            "..",
            "../admin",
            "a/sa/b",
            "a..b",
            ".a",
            "A",
            &"a".repeat(254),
        ] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad:?}");
        }
        let err = check_dns_subdomain("a..b").unwrap_err().to_string();
        assert!(err.contains("empty parts"), "{err}");
        assert_eq!(
            check_dns_subdomain("a.B").unwrap_err().to_string(),
            "part \"B\" must be lowercase letters, digits and '-' only"
        );
        assert_eq!(
            check_label_key("Weft.dev/x").unwrap_err().to_string(),
            "prefix \"Weft.dev\" part \"Weft\" must be lowercase letters, digits and '-' only"
        );
    }

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("weft.dev/dataplane-mode").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        for bad in ["", "/x", "a/", "bad key", "Weft.dev/x", "a/b/c", "-a"] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_x").is_ok());
        assert!(check_label_value(&"v".repeat(64)).is_err());
        assert!(check_label_value("a b").is_err());
        assert!(check_label_value("-a").is_err());
    }
}

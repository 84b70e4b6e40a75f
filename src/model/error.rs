//! [`ConfigError`], the error type of the model and config layer, and [`ObjectRef`], the
//! object (kind, namespace, name) an error blames.
//!
//! An error names the object and the field path; the place in a file (the 1-based document
//! number) is there only when the object came from a file: a watch-based source has none.

use std::fmt;
use std::path::PathBuf;

/// The object an error is about: `Pod shop/order-5d9`, `Namespace shop`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// The `kind`, as written in manifests.
    pub kind: String,
    /// `None` for cluster-scoped kinds (Namespace).
    pub namespace: Option<String>,
    /// `None` when the object has no name (yet): shown as `<no name>`.
    pub name: Option<String>,
}

impl ObjectRef {
    /// A namespaced object (`namespace` defaults to `default`, as the API server does).
    pub fn namespaced(kind: &str, namespace: Option<&str>, name: Option<&str>) -> Self {
        ObjectRef {
            kind: kind.to_owned(),
            namespace: Some(namespace.unwrap_or("default").to_owned()),
            name: name.map(str::to_owned),
        }
    }

    /// A cluster-scoped object.
    pub fn cluster_scoped(kind: &str, name: Option<&str>) -> Self {
        ObjectRef {
            kind: kind.to_owned(),
            namespace: None,
            name: name.map(str::to_owned),
        }
    }

    /// `Pod shop/a (document 2)`, or `Pod shop/a` without a document.
    pub fn located(&self, document: Option<usize>) -> String {
        match document {
            Some(document) => format!("{self} (document {document})"),
            None => self.to_string(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.as_deref().unwrap_or("<no name>");
        match &self.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{name}", self.kind),
            None => write!(f, "{} {name}", self.kind),
        }
    }
}

/// Errors of the model and config layer. Messages name the document (1-based, for objects
/// read from a file), the object and the field, with the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// What the read failed with.
        #[source]
        source: std::io::Error,
    },
    /// The file as a whole is refused (e.g. it would release every enrolled pod).
    #[error("{path}: {message}")]
    Refused {
        /// The config file, as displayed.
        path: String,
        /// Why it is refused and what to do instead.
        message: String,
    },
    /// A document is not valid YAML.
    #[error("document {document}: invalid YAML: {message}")]
    Yaml {
        /// The 1-based document of the file.
        document: usize,
        /// The YAML parser's error.
        message: String,
    },
    /// A document is not a supported object, or an object is invalid.
    #[error("{}{field}: {message}", invalid_prefix(*.document, .object.as_deref()))]
    Invalid {
        /// The 1-based document of the file the object came from, if it came from a file.
        document: Option<usize>,
        /// The object, when known (a document that is not an object has none). Boxed to keep
        /// the error small.
        object: Option<Box<ObjectRef>>,
        /// Field path, e.g. `status.podIPs[1].ip`.
        field: String,
        /// What is wrong with the field, and how to fix it where possible.
        message: String,
    },
}

impl ConfigError {
    /// The object the error is about, if it is about one.
    pub fn object(&self) -> Option<&ObjectRef> {
        match self {
            ConfigError::Invalid { object, .. } => object.as_deref(),
            _ => None,
        }
    }
}

/// `document 3 (Pod shop/a): `, `document 3: `, `Pod shop/a: ` or nothing.
fn invalid_prefix(document: Option<usize>, object: Option<&ObjectRef>) -> String {
    match (document, object) {
        (Some(document), Some(object)) => format!("document {document} ({object}): "),
        (Some(document), None) => format!("document {document}: "),
        (None, Some(object)) => format!("{object}: "),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_document_object_and_field_as_known() {
        let pod = ObjectRef::namespaced("Pod", Some("shop"), Some("a"));
        let invalid = |document, object: Option<ObjectRef>| ConfigError::Invalid {
            document,
            object: object.map(Box::new),
            field: "status.podIP".into(),
            message: "bad".into(),
        };
        assert_eq!(
            invalid(Some(3), Some(pod.clone())).to_string(),
            "document 3 (Pod shop/a): status.podIP: bad"
        );
        assert_eq!(
            invalid(None, Some(pod.clone())).to_string(),
            "Pod shop/a: status.podIP: bad"
        );
        assert_eq!(
            invalid(Some(1), None).to_string(),
            "document 1: status.podIP: bad"
        );
        assert_eq!(
            ObjectRef::cluster_scoped("Namespace", None).to_string(),
            "Namespace <no name>"
        );
        assert_eq!(
            ObjectRef::namespaced("Service", None, Some("s")).located(Some(2)),
            "Service default/s (document 2)"
        );
        assert_eq!(pod.located(None), "Pod shop/a");
    }
}

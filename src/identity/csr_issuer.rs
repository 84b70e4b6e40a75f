//! The [`Issuer`] of a node that holds no CA key: it makes each leaf's key pair here, sends
//! only a Kubernetes `CertificateSigningRequest` (`signerName: weft.dev/workload`) and waits
//! for `weft signer` to approve and sign it, or to deny it.
//!
//! What comes back is checked before the daemon presents it ([`WorkloadKey::accept_chain`]):
//! our key, exactly the identity asked for, a chain to the current mesh roots. A denial
//! carries the signer's reason into the error (and the daemon's log); no answer within the
//! timeout is an error too, and the certificate manager retries with backoff while an older
//! leaf keeps serving. Outcomes are counted in `weft_csr_requests_total{result}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::csr::{WorkloadKey, SIGNER_NAME, USAGES};
use super::error::{CsrError, IdentityError};
use super::issuer::{IssueFuture, IssueRequest, Issuer};
use super::spiffe::SpiffeId;
use super::trust::TrustAnchors;

/// CSR outcomes on this node, by `result`: `issued`, `denied`, `failed` (the signer marked
/// it failed, or its chain was refused), `timeout`, `error` (the API refused or failed).
pub const CSR_REQUESTS: &str = "weft_csr_requests_total";
/// Seconds from creating a CSR to holding its certificate.
pub const CSR_WAIT: &str = "weft_csr_wait_seconds";

/// The shortest `expirationSeconds` the API server accepts; shorter lifetimes are the
/// signer's to impose (its `--max-cert-ttl`).
const MIN_EXPIRATION_SECONDS: u64 = 600;
/// Label on every CSR a node makes: which node asked.
pub const NODE_LABEL: &str = "weft.dev/node";
/// Annotation on every CSR a node makes: the identity asked for, for humans.
pub const IDENTITY_ANNOTATION: &str = "weft.dev/identity";

/// How long a CSR nobody answered in time is waited for again (instead of sending a new
/// one) on the next attempt; below the signer's `--max-csr-age`.
const REUSE_OUTSTANDING_FOR: Duration = Duration::from_secs(15 * 60);

/// A CSR sent and not answered yet, with the key it is for.
struct Outstanding {
    name: String,
    key: WorkloadKey,
    created: Instant,
}

/// Asks `weft signer` for leaves through the Kubernetes API.
#[derive(Clone)]
pub struct CsrIssuer {
    client: Client,
    node_name: String,
    anchors: TrustAnchors,
    timeout: Duration,
    /// At most one unanswered CSR per identity.
    outstanding: Arc<Mutex<HashMap<SpiffeId, Outstanding>>>,
}

impl CsrIssuer {
    /// An issuer for node `node_name` that waits up to `timeout` per CSR and checks chains
    /// against `anchors`.
    pub fn new(
        client: Client,
        node_name: String,
        anchors: TrustAnchors,
        timeout: Duration,
    ) -> CsrIssuer {
        CsrIssuer {
            client,
            node_name,
            anchors,
            timeout,
            outstanding: Arc::default(),
        }
    }

    async fn request(&self, request: IssueRequest) -> Result<super::IssuedLeaf, CsrError> {
        let id = request.id.to_string();
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        // A CSR this node already sent for the identity and stopped waiting for (the signer
        // was down, say) is waited for again rather than joined by another.
        let reused = self
            .lock_outstanding()
            .remove(&request.id)
            .filter(|o| o.created.elapsed() < REUSE_OUTSTANDING_FOR);
        let (name, key, started) = match reused {
            Some(outstanding) => {
                tracing::info!(identity = %id, csr = %outstanding.name, "still waiting for the signer to answer");
                (outstanding.name, outstanding.key, outstanding.created)
            }
            None => self.create(&api, &request).await?,
        };
        let answered = match tokio::time::timeout(
            self.timeout,
            kube::runtime::wait::await_condition(
                api,
                &name,
                |csr: Option<&CertificateSigningRequest>| {
                    csr.is_some_and(|csr| answer(csr).is_some())
                },
            ),
        )
        .await
        {
            Ok(answered) => answered.map_err(|e| CsrError::Watch {
                name: name.clone(),
                id: id.clone(),
                reason: e.to_string(),
            })?,
            Err(_) => {
                self.lock_outstanding().insert(
                    request.id.clone(),
                    Outstanding {
                        name: name.clone(),
                        key,
                        created: started,
                    },
                );
                return Err(CsrError::Timeout {
                    name,
                    id,
                    waited: self.timeout,
                });
            }
        };
        match answered.as_ref().and_then(answer) {
            Some(Answer::Certificate(pem)) => {
                let leaf = key
                    .accept_chain(pem, &self.anchors.current())
                    .map_err(|source| CsrError::BadChain {
                        name: name.clone(),
                        id: id.clone(),
                        source,
                    })?;
                metrics::histogram!(CSR_WAIT).record(started.elapsed().as_secs_f64());
                tracing::info!(identity = %id, csr = %name,
                    valid_until = %humantime::format_rfc3339_seconds(leaf.not_after),
                    "the signer issued a certificate");
                Ok(leaf)
            }
            Some(Answer::Denied { reason, message }) => Err(CsrError::Denied {
                name,
                id,
                reason,
                message,
            }),
            Some(Answer::Failed { reason, message }) => Err(CsrError::Failed {
                name,
                id,
                reason,
                message,
            }),
            None => Err(CsrError::Timeout {
                name,
                id,
                waited: started.elapsed(),
            }),
        }
    }
}

impl CsrIssuer {
    /// Makes a key and sends a new CSR for `request.id`.
    async fn create(
        &self,
        api: &Api<CertificateSigningRequest>,
        request: &IssueRequest,
    ) -> Result<(String, WorkloadKey, Instant), CsrError> {
        let id = request.id.to_string();
        let key = WorkloadKey::generate(&request.id).map_err(|e| CsrError::Generate {
            id: id.clone(),
            reason: e.to_string(),
        })?;
        let expiration = request.ttl.as_secs().max(MIN_EXPIRATION_SECONDS);
        let csr = CertificateSigningRequest {
            metadata: ObjectMeta {
                generate_name: Some(generate_name(&self.node_name, request.id.service_account())),
                labels: Some(BTreeMap::from([(
                    NODE_LABEL.to_owned(),
                    label_value(&self.node_name),
                )])),
                annotations: Some(BTreeMap::from([(
                    IDENTITY_ANNOTATION.to_owned(),
                    id.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(key.request_pem().as_bytes().to_vec()),
                signer_name: SIGNER_NAME.to_owned(),
                usages: Some(USAGES.iter().map(|u| (*u).to_owned()).collect()),
                expiration_seconds: Some(i32::try_from(expiration).unwrap_or(i32::MAX)),
                ..CertificateSigningRequestSpec::default()
            },
            status: None,
        };
        let started = Instant::now();
        let created = api
            .create(&PostParams::default(), &csr)
            .await
            .map_err(|source| CsrError::Api {
                id: id.clone(),
                source,
            })?;
        let name = created.metadata.name.clone().unwrap_or_default();
        tracing::info!(identity = %id, csr = %name, "asked the signer for a certificate");
        Ok((name, key, started))
    }

    fn lock_outstanding(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, Outstanding>> {
        // Plain data: a panic elsewhere leaves it consistent.
        self.outstanding.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Issuer for CsrIssuer {
    fn issue(&self, request: IssueRequest) -> IssueFuture<'_> {
        Box::pin(async move {
            let outcome = self.request(request).await;
            let result = match &outcome {
                Ok(_) => "issued",
                Err(error) => {
                    tracing::warn!(%error, "no certificate from the signer");
                    error.result_label()
                }
            };
            metrics::counter!(CSR_REQUESTS, "result" => result).increment(1);
            outcome.map_err(IdentityError::from)
        })
    }
}

/// What the signer has said about a CSR so far.
enum Answer<'a> {
    Certificate(&'a [u8]),
    Denied { reason: String, message: String },
    Failed { reason: String, message: String },
}

fn answer(csr: &CertificateSigningRequest) -> Option<Answer<'_>> {
    let status = csr.status.as_ref()?;
    if let Some(cert) = status.certificate.as_ref().filter(|c| !c.0.is_empty()) {
        return Some(Answer::Certificate(&cert.0));
    }
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        let text = |field: &Option<String>| field.clone().unwrap_or_default();
        match condition.type_.as_str() {
            "Denied" => {
                return Some(Answer::Denied {
                    reason: text(&condition.reason),
                    message: text(&condition.message),
                })
            }
            "Failed" => {
                return Some(Answer::Failed {
                    reason: text(&condition.reason),
                    message: text(&condition.message),
                })
            }
            _ => {}
        }
    }
    None
}

/// `weft-<node>-<sa>-`, cut to fit an object name with the API server's random suffix, in
/// DNS-subdomain characters.
fn generate_name(node: &str, service_account: &str) -> String {
    let mut base: String = format!("weft-{node}-{service_account}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    base.push('-');
    base
}

/// A node name as a label value (63 characters at most; node names are DNS subdomains, so
/// only the length can be out of bounds).
fn label_value(node: &str) -> String {
    node.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_names_are_valid_object_names() {
        assert_eq!(generate_name("node-1", "cart"), "weft-node-1-cart-");
        assert_eq!(generate_name("Node_1", "a.b"), "weft-node-1-a.b-");
        assert!(generate_name(&"n".repeat(300), "sa").len() <= 201);
        assert_eq!(
            label_value(&format!("{}-x", "a".repeat(62))),
            "a".repeat(62)
        );
    }
}

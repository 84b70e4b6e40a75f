//! The signer's loop over `weft.dev/workload` CSRs: every CSR without an answer is reviewed
//! and then approved and signed, or denied; one approved but not yet signed (the signer
//! stopped between the two, or an admin approved it by hand) is reviewed again and signed, or
//! marked Failed. A lookup or write the API server fails leaves the CSR pending; it is
//! retried on the next tick. Nothing lives only in memory: a restarted signer lists the CSRs
//! again and carries on where the API server says things are.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::review::{review, Denial, ReviewPolicy, Verdict};
use super::SignerError;
use crate::identity::csr::SIGNER_NAME;
use crate::identity::MeshCa;

/// CSRs the signer decided, by `result` (`issued`, `denied`, `failed`) and `reason`.
pub const SIGNER_CSRS: &str = "weft_signer_csrs_total";
/// How often pending CSRs are retried.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Where a CSR stands, as the API server says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nobody has answered.
    Unanswered,
    /// Approved, no certificate yet.
    Approved,
    /// Signed, denied or failed: nothing left to do.
    Done,
}

fn stage(csr: &CertificateSigningRequest) -> Stage {
    let Some(status) = csr.status.as_ref() else {
        return Stage::Unanswered;
    };
    if status.certificate.as_ref().is_some_and(|c| !c.0.is_empty()) {
        return Stage::Done;
    }
    let holds = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == kind && c.status == "True")
    };
    if holds("Denied") || holds("Failed") {
        Stage::Done
    } else if holds("Approved") {
        Stage::Approved
    } else {
        Stage::Unanswered
    }
}

/// What the loop needs.
pub struct Controller {
    client: Client,
    policy: ReviewPolicy,
    ca_dir: PathBuf,
    /// Events on each CSR answered, so `kubectl describe csr` shows why.
    recorder: Recorder,
}

impl Controller {
    /// A controller signing with the CA in `ca_dir` (re-read for every signature, so a
    /// rotated Secret is picked up) under `policy`.
    pub fn new(client: Client, policy: ReviewPolicy, ca_dir: PathBuf) -> Controller {
        Controller {
            recorder: Recorder::new(client.clone(), Reporter::from("weft-signer")),
            client,
            policy,
            ca_dir,
        }
    }

    /// Runs until the watch ends (never, in practice); `listed` turns true once the CSRs
    /// that existed at start have been seen.
    pub async fn run(self, listed: watch::Sender<bool>) {
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.signerName={SIGNER_NAME}"));
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        let mut pending: BTreeMap<String, CertificateSigningRequest> = BTreeMap::new();
        let mut tick = tokio::time::interval(RETRY_EVERY);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    None => return,
                    Some(Ok(watcher::Event::Apply(csr) | watcher::Event::InitApply(csr))) => {
                        let name = csr.name_any();
                        if stage(&csr) == Stage::Done {
                            pending.remove(&name);
                        } else if !self.handle(&csr).await {
                            pending.insert(name, csr);
                        } else {
                            pending.remove(&name);
                        }
                    }
                    Some(Ok(watcher::Event::Delete(csr))) => {
                        pending.remove(&csr.name_any());
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        listed.send_replace(true);
                    }
                    Some(Ok(watcher::Event::Init)) => {}
                    Some(Err(error)) => tracing::warn!(%error, "watching CSRs failed; retrying"),
                },
                _ = tick.tick() => {
                    let retry: Vec<CertificateSigningRequest> = pending.values().cloned().collect();
                    for csr in retry {
                        if self.handle(&csr).await {
                            pending.remove(&csr.name_any());
                        }
                    }
                }
            }
        }
    }

    /// Takes one CSR as far as it goes; `false` when it must be retried.
    async fn handle(&self, seen: &CertificateSigningRequest) -> bool {
        let name = seen.name_any();
        if stage(seen) == Stage::Done {
            return true;
        }
        // The watch may deliver a version older than this signer's own last write (approved,
        // not yet showing the certificate it wrote next): decide on the current one.
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let csr = match api.get_opt(&name).await {
            Ok(Some(csr)) => csr,
            Ok(None) => return true,
            Err(error) => {
                tracing::warn!(csr = %name, %error, "cannot read the CSR now; will retry");
                count("failed", "ApiError");
                return false;
            }
        };
        let csr = &csr;
        let stage = stage(csr);
        if stage == Stage::Done {
            return true;
        }
        let verdict = match review(&self.client, &self.policy, csr).await {
            Ok(verdict) => verdict,
            Err(error) => {
                tracing::warn!(csr = %name, %error, "cannot review the CSR now; will retry");
                count("failed", "ApiError");
                return false;
            }
        };
        let outcome = match (verdict, stage) {
            (Verdict::Deny(denial), Stage::Unanswered) => {
                let denied = self.deny(&name, stage, &denial).await;
                if denied.is_ok() {
                    self.record(csr, EventType::Warning, denial.reason, &denial.message)
                        .await;
                }
                denied
            }
            (Verdict::Deny(denial), _) => {
                let failed = self.fail(&name, stage, &denial).await;
                if failed.is_ok() {
                    self.record(csr, EventType::Warning, denial.reason, &denial.message)
                        .await;
                }
                failed
            }
            (Verdict::Sign { request, node, ttl }, stage) => {
                if stage == Stage::Unanswered {
                    let message = format!("weft-node on {node} runs a pod of {}", request.id);
                    match self.approve(&name, stage, &message).await {
                        Ok(()) => {}
                        Err(SignerError::AlreadyAnswered(_)) => return true,
                        Err(error) => return retry(&name, "approving", error),
                    }
                }
                let signed = self.sign(&name, &request, &node, ttl).await;
                if signed.is_ok() {
                    let message = format!("signed {} for weft-node on {node}", request.id);
                    self.record(csr, EventType::Normal, "Signed", &message)
                        .await;
                }
                signed
            }
        };
        match outcome {
            Ok(()) | Err(SignerError::AlreadyAnswered(_)) => true,
            Err(error) => retry(&name, "answering", error),
        }
    }

    /// An Event on the CSR (what `kubectl describe csr` lists); a failure to record it is
    /// logged, not retried: the CSR's conditions already say the same.
    async fn record(
        &self,
        csr: &CertificateSigningRequest,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let event = Event {
            type_: kind,
            reason: reason.to_owned(),
            note: Some(message.chars().take(1000).collect()),
            action: "Review".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &csr.object_ref(&())).await {
            tracing::warn!(csr = %csr.name_any(), %error, "cannot record an event on the CSR");
        }
    }

    async fn approve(&self, name: &str, stage: Stage, message: &str) -> Result<(), SignerError> {
        self.add_condition(name, stage, "Approved", "WeftNodeAuthorized", message, true)
            .await
    }

    async fn deny(&self, name: &str, stage: Stage, denial: &Denial) -> Result<(), SignerError> {
        self.add_condition(name, stage, "Denied", denial.reason, &denial.message, true)
            .await?;
        tracing::warn!(csr = name, reason = denial.reason, message = %denial.message, "denied a CSR");
        count("denied", denial.reason);
        Ok(())
    }

    async fn fail(&self, name: &str, stage: Stage, denial: &Denial) -> Result<(), SignerError> {
        self.add_condition(name, stage, "Failed", denial.reason, &denial.message, false)
            .await?;
        tracing::warn!(csr = name, reason = denial.reason, message = %denial.message,
            "an approved CSR does not pass review; marked Failed, not signed");
        count("failed", denial.reason);
        Ok(())
    }

    async fn sign(
        &self,
        name: &str,
        request: &crate::identity::csr::WorkloadRequest,
        node: &str,
        ttl: Duration,
    ) -> Result<(), SignerError> {
        let ca_dir = self.ca_dir.clone();
        let to_sign = request.clone();
        let signed = tokio::task::spawn_blocking(move || {
            let ca = MeshCa::load(&ca_dir)?;
            let key = to_sign
                .public_key()
                .map_err(|e| crate::identity::CaError::Signing {
                    id: to_sign.id.to_string(),
                    reason: e.to_string(),
                })?;
            ca.sign(&to_sign.id, &key, ttl)
        })
        .await
        .map_err(|e| SignerError::Task(e.to_string()))??;
        let status = json!({
            "status": {"certificate": ByteString(signed.chain_pem().into_bytes())}
        });
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|source| SignerError::Api {
                action: "writing the certificate of",
                name: name.to_owned(),
                source,
            })?;
        tracing::info!(csr = name, identity = %request.id, node,
            valid_until = %humantime::format_rfc3339_seconds(signed.not_after), "signed a CSR");
        count("issued", "Signed");
        Ok(())
    }

    /// Appends a condition, through the approval subresource (`approval`) or status, if
    /// the CSR is still at `expected` (else [`SignerError::AlreadyAnswered`]).
    async fn add_condition(
        &self,
        name: &str,
        expected: Stage,
        kind: &str,
        reason: &str,
        message: &str,
        approval: bool,
    ) -> Result<(), SignerError> {
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let current = api.get(name).await.map_err(|source| SignerError::Api {
            action: "reading",
            name: name.to_owned(),
            source,
        })?;
        if stage(&current) != expected {
            return Err(SignerError::AlreadyAnswered(name.to_owned()));
        }
        let mut conditions = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        conditions.push(CertificateSigningRequestCondition {
            type_: kind.to_owned(),
            status: "True".to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        });
        // The resourceVersion makes this a compare-and-swap: a CSR someone else answered
        // meanwhile is not answered twice.
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        let params = PatchParams::default();
        let written = if approval {
            api.patch_approval(name, &params, &Patch::Merge(&patch))
                .await
        } else {
            api.patch_status(name, &params, &Patch::Merge(&patch)).await
        };
        written.map_err(|source| SignerError::Api {
            action: if approval {
                "approving or denying"
            } else {
                "marking failed"
            },
            name: name.to_owned(),
            source,
        })?;
        Ok(())
    }
}

fn retry(name: &str, what: &str, error: SignerError) -> bool {
    tracing::warn!(csr = name, %error, "{what} the CSR failed; will retry");
    count("failed", "ApiError");
    false
}

fn count(result: &'static str, reason: &'static str) {
    metrics::counter!(SIGNER_CSRS, "result" => result, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestStatus;

    use super::*;

    fn with(conditions: &[(&str, &str)], certificate: bool) -> CertificateSigningRequest {
        CertificateSigningRequest {
            status: Some(CertificateSigningRequestStatus {
                certificate: certificate.then(|| ByteString(b"pem".to_vec())),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(kind, status)| CertificateSigningRequestCondition {
                            type_: (*kind).into(),
                            status: (*status).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn stages_follow_the_conditions() {
        assert_eq!(
            stage(&CertificateSigningRequest::default()),
            Stage::Unanswered
        );
        assert_eq!(stage(&with(&[], false)), Stage::Unanswered);
        assert_eq!(
            stage(&with(&[("Approved", "True")], false)),
            Stage::Approved
        );
        assert_eq!(
            stage(&with(&[("Approved", "False")], false)),
            Stage::Unanswered
        );
        assert_eq!(stage(&with(&[("Approved", "True")], true)), Stage::Done);
        assert_eq!(stage(&with(&[("Denied", "True")], false)), Stage::Done);
        assert_eq!(
            stage(&with(&[("Approved", "True"), ("Failed", "True")], false)),
            Stage::Done
        );
    }
}

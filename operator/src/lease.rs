//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles. A replica takes the Lease when it is free or its holder stopped
//! renewing it for `duration`; every write goes through the Lease's resourceVersion, so two
//! replicas never both win. The leader renews it every `duration / 3`, and exits when it cannot
//! (another replica may already lead; the Pod restarts and waits its turn).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// What one attempt found.
enum Attempt {
    Leading,
    HeldBy(String),
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Elector {
        Elector { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    fn spec(&self, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(Timestamp::now())),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn attempt(&self) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::HeldBy("another replica".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expires = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .and_then(|t| t.checked_add(jiff_secs(spec.lease_duration_seconds.unwrap_or(15) as i64)).ok());
        let free = holder.is_empty() || expires.is_none_or(|e| e < Timestamp::now());
        if holder != self.identity && !free {
            return Ok(Attempt::HeldBy(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != self.identity);
        let mut next = self.spec(transitions);
        if holder == self.identity {
            next.acquire_time = spec.acquire_time;
        }
        lease.spec = Some(next);
        // The resourceVersion in `lease` makes this fail if anyone wrote in between.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::HeldBy("another replica".into())),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut logged = None;
        loop {
            match self.attempt().await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                    return;
                }
                Ok(Attempt::HeldBy(h)) => {
                    if logged.as_ref() != Some(&h) {
                        tracing::info!(lease = %self.name, holder = %h, "waiting for the leader lease");
                        logged = Some(h);
                    }
                }
                Err(e) => tracing::warn!(lease = %self.name, "leader election: {e}"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews the Lease until it is lost; returns why.
    pub async fn hold(&self) -> String {
        let mut failures = 0;
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.attempt().await {
                Ok(Attempt::Leading) => failures = 0,
                Ok(Attempt::HeldBy(h)) => return format!("the leader lease is now held by {h}"),
                // Transient API errors: keep leading while the Lease cannot have expired.
                Err(e) if failures < 1 => {
                    failures += 1;
                    tracing::warn!("renewing the leader lease: {e}");
                }
                Err(e) => return format!("cannot renew the leader lease: {e}"),
            }
        }
    }
}

fn jiff_secs(s: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(s)
}

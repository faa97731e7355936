//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles. A replica takes the Lease when it is free or its holder stopped
//! renewing it for `duration`; every write goes through the Lease's resourceVersion, so two
//! replicas never both win. The leader renews it every `duration / 3`, retries a failed renewal
//! until two thirds of `duration` have passed since the last one, and then exits (another
//! replica may lead soon; the Pod restarts and waits its turn).

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

    /// Renews the Lease until it is lost; returns why. An API server that cannot be reached
    /// (restarting, a network blip) is retried every `duration / 6` until the renew deadline,
    /// two thirds of `duration` after the last renewal (client-go's default ratio): until then
    /// no other replica can have taken the Lease, so this one keeps leading.
    pub async fn hold(&self) -> String {
        let mut renewed = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            tokio::time::sleep(if failing { self.duration / 6 } else { self.duration / 3 }).await;
            match self.attempt().await {
                Ok(Attempt::Leading) => (renewed, failing) = (tokio::time::Instant::now(), false),
                Ok(Attempt::HeldBy(h)) => return format!("the leader lease is now held by {h}"),
                Err(e) if renewed.elapsed() + self.duration / 6 < renew_deadline(self.duration) => {
                    failing = true;
                    tracing::warn!("renewing the leader lease (retrying until its renew deadline): {e}");
                }
                Err(e) => {
                    let deadline = renew_deadline(self.duration);
                    return format!("cannot renew the leader lease within {deadline:?} of the last renewal: {e}");
                }
            }
        }
    }
}

/// How long a leader keeps leading without renewing.
fn renew_deadline(duration: Duration) -> Duration {
    duration * 2 / 3
}

fn jiff_secs(s: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(s)
}

//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the
//! holder renews the lease every few seconds; a candidate takes it over once it has
//! seen no renewal (no new resourceVersion) for the lease's duration, measured on its
//! own clock (so clocks need not agree). Every write carries the resourceVersion it
//! read, so of two candidates only one wins (the other gets 409 Conflict).
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
    /// The lease's resourceVersion last seen, and when it was first seen.
    observed: Option<(String, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// A conflict or an "already exists": another candidate wrote first.
fn lost_race(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists())
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, me: &str, duration: Duration) -> Elector {
        Elector {
            api,
            name: name.into(),
            me: me.into(),
            duration,
            observed: None,
        }
    }

    /// Takes or renews the lease; whether this candidate leads now.
    pub async fn try_lead(&mut self) -> Result<bool, kube::Error> {
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.me.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if lost_race(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != rv) {
            self.observed = Some((rv, Instant::now()));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let held_by_me = spec.holder_identity.as_deref() == Some(self.me.as_str());
        let their = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(1) as u64));
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() > their);
        if !(held_by_me || spec.holder_identity.is_none() || expired) {
            return Ok(false);
        }
        let mut renewed = lease.clone();
        renewed.spec = Some(LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(now()),
            acquire_time: if held_by_me {
                spec.acquire_time
            } else {
                Some(now())
            },
            lease_transitions: Some(
                spec.lease_transitions.unwrap_or(0) + if held_by_me { 0 } else { 1 },
            ),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &renewed)
            .await
        {
            Ok(l) => {
                // Our own write is not another holder's renewal.
                let rv = l.metadata.resource_version.unwrap_or_default();
                self.observed = Some((rv, Instant::now()));
                Ok(true)
            }
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

//! Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`), applied by the core's
//! monitor: a container whose run ended by itself is started again per its policy after a
//! back-off (dockerd's: 100 ms doubling per restart up to a minute, back to 100 ms after a run of
//! 10 s or more). A user's stop or kill is remembered (`restart.json` in the bundle, with the
//! restart count) so that nothing restarts what the user stopped; a user's start clears both.
//! Because the record is on disk, containers whose run ended while no core was there (a killed
//! container, a VM that rebooted) come back when a core starts again.

use std::fs;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use berth_proto::{ContainerRef, ContainerStatus, RestartPolicy};

use super::ContainerService;

const RESTART_FILE: &str = "restart.json";

/// What the core remembers about restarts of a container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartState {
    /// Restarts by the policy since the user last started it (Docker's RestartCount).
    pub count: u64,
    /// The user stopped or killed it: no policy restarts it (until the user starts it).
    pub stopped_by_user: bool,
}

/// Whether a run that ended with `exit_code` is restarted under `policy`.
pub fn wants_restart(policy: &RestartPolicy, exit_code: i64, state: &RestartState) -> bool {
    if state.stopped_by_user {
        return false;
    }
    match policy.name.as_str() {
        "always" | "unless-stopped" => true,
        "on-failure" => {
            exit_code != 0
                && (policy.maximum_retry_count <= 0
                    || state.count < policy.maximum_retry_count as u64)
        }
        _ => false,
    }
}

/// dockerd's back-off before the next restart.
pub fn backoff(count: u64, ran_for: Option<Duration>) -> Duration {
    if ran_for.is_some_and(|d| d >= Duration::from_secs(10)) {
        return Duration::from_millis(100);
    }
    (Duration::from_millis(100) * 2u32.pow(count.min(10) as u32)).min(Duration::from_secs(60))
}

fn ran_for(started: Option<&str>, finished: Option<&str>) -> Option<Duration> {
    let s = chrono::DateTime::parse_from_rfc3339(started?).ok()?;
    let f = chrono::DateTime::parse_from_rfc3339(finished?).ok()?;
    (f - s).to_std().ok()
}

impl ContainerService {
    pub(super) fn restart_state(&self, id: &str) -> RestartState {
        fs::read(self.bundle(id).join(RESTART_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_restart_state(&self, id: &str, st: &RestartState) {
        let dir = self.bundle(id);
        let tmp = dir.join(format!("{RESTART_FILE}.tmp"));
        let written = fs::write(&tmp, serde_json::to_vec(st).expect("serialisable"))
            .and_then(|()| fs::rename(&tmp, dir.join(RESTART_FILE)));
        if let Err(e) = written {
            tracing::warn!("container {id}: recording its restarts: {e}");
        }
    }

    /// A start by the policy, under the container's lock: counts it, unless the user stopped
    /// the container meanwhile (then it does not happen: false).
    pub(super) fn count_restart(&self, id: &str) -> bool {
        let mut st = self.restart_state(id);
        if st.stopped_by_user {
            return false;
        }
        st.count += 1;
        self.write_restart_state(id, &st);
        true
    }

    /// A start by the user (under the container's lock): the count starts again and the policy
    /// applies again.
    pub(super) fn user_started(&self, id: &str) {
        self.restarts.lock().expect("restarts").remove(id);
        if self.restart_state(id) != RestartState::default() {
            self.write_restart_state(id, &RestartState::default());
        }
    }

    /// A stop or kill by the user, under the container's lock (recorded before the signal, so
    /// the monitor never sees the exit first).
    pub(super) fn user_stopped(&self, id: &str) {
        self.restarts.lock().expect("restarts").remove(id);
        let mut st = self.restart_state(id);
        if !st.stopped_by_user {
            st.stopped_by_user = true;
            self.write_restart_state(id, &st);
        }
    }

    /// Whether the monitor is waiting to restart the container (shown as "restarting").
    pub(super) fn restart_pending(&self, id: &str) -> bool {
        self.restarts.lock().expect("restarts").contains_key(id)
    }

    /// One round of the monitor: schedules the restart of containers whose run ended by itself
    /// under a policy that wants it, and starts those whose back-off is over.
    pub(super) fn apply_restart_policies(&self) {
        let Ok(records) = self.store.all() else {
            return;
        };
        for rec in records {
            let policy = &rec.spec.host.restart_policy;
            if matches!(policy.name.as_str(), "" | "no") || rec.spec.host.auto_remove {
                continue;
            }
            let v = self.view(&rec.id);
            if v.running || v.generation == 0 || v.state.status != ContainerStatus::Exited {
                self.restarts.lock().expect("restarts").remove(&rec.id);
                continue;
            }
            let st = self.restart_state(&rec.id);
            if !wants_restart(policy, v.state.exit_code.unwrap_or(0), &st) {
                continue;
            }
            let now = Instant::now();
            let due = {
                let mut pending = self.restarts.lock().expect("restarts");
                match pending.get(&rec.id) {
                    None => {
                        let ran = ran_for(
                            v.state.started_at.as_deref(),
                            v.state.finished_at.as_deref(),
                        );
                        pending.insert(rec.id.clone(), now + backoff(st.count, ran));
                        false
                    }
                    Some(at) => *at <= now,
                }
            };
            if !due {
                continue;
            }
            tracing::info!(
                "restarting container {} (policy {}, restart {})",
                rec.id,
                policy.name,
                st.count + 1
            );
            let started = self.start_run(&ContainerRef(rec.id.clone()), true);
            self.restarts.lock().expect("restarts").remove(&rec.id);
            if let Err(e) = started {
                tracing::warn!("restarting container {}: {e}", rec.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, max: i64) -> RestartPolicy {
        RestartPolicy {
            name: name.into(),
            maximum_retry_count: max,
        }
    }

    #[test]
    fn policies_decide_as_dockerd() {
        let fresh = RestartState::default();
        let stopped = RestartState {
            count: 0,
            stopped_by_user: true,
        };
        assert!(wants_restart(&policy("always", 0), 0, &fresh));
        assert!(!wants_restart(&policy("always", 0), 0, &stopped));
        assert!(wants_restart(&policy("unless-stopped", 0), 1, &fresh));
        assert!(!wants_restart(&policy("unless-stopped", 0), 1, &stopped));
        assert!(!wants_restart(&policy("no", 0), 1, &fresh));
        assert!(!wants_restart(&policy("", 0), 1, &fresh));
        assert!(!wants_restart(&policy("on-failure", 0), 0, &fresh));
        assert!(wants_restart(&policy("on-failure", 0), 2, &fresh));
        let twice = RestartState {
            count: 2,
            stopped_by_user: false,
        };
        assert!(wants_restart(&policy("on-failure", 3), 1, &twice));
        assert!(!wants_restart(&policy("on-failure", 2), 1, &twice));
    }

    #[test]
    fn backoff_doubles_and_resets_after_a_long_run() {
        assert_eq!(backoff(0, None), Duration::from_millis(100));
        assert_eq!(
            backoff(3, Some(Duration::from_secs(1))),
            Duration::from_millis(800)
        );
        assert_eq!(backoff(30, None), Duration::from_secs(60));
        assert_eq!(
            backoff(5, Some(Duration::from_secs(10))),
            Duration::from_millis(100)
        );
        assert_eq!(
            ran_for(Some("2026-01-01T00:00:00Z"), Some("2026-01-01T00:00:12.5Z")),
            Some(Duration::from_millis(12500))
        );
        assert_eq!(ran_for(None, Some("2026-01-01T00:00:00Z")), None);
    }
}

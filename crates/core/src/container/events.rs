//! Container events (`docker events`), with dockerd's names and attributes: every event names
//! the container (`Actor.ID`) and carries its `image` (as the user gave it), `name` and
//! labels, plus the action's own attributes (`exitCode`, `signal`, `execID`, …).
//!
//! Most events are recorded where the operation succeeds. A run's end (`die`) is found by
//! looking: the shim writes the exit into `state.json`, and the core reports each run's end
//! once: from the monitor's rounds, and at once where an operation waits for the exit (stop,
//! kill-and-remove, wait, a restart by policy) so that `die` comes before what follows it. The
//! last run whose end was reported is recorded in the bundle (`exit-reported`), so an exit that
//! happened while no core ran is reported by the next one, and none is reported twice.

use std::collections::BTreeMap;
use std::fs;

use berth_proto::{ContainerRef, CONTAINER_EVENT};

use super::shim::{Phase, RunState};
use super::store::ContainerRecord;
use super::ContainerService;

/// The bundle file holding the generation of the last run whose end was reported.
const EXIT_REPORTED: &str = "exit-reported";

/// A container's `Actor.Attributes`: `extra`, the labels over them, `image` and `name` last (the
/// order in which dockerd fills them).
pub fn attributes(rec: &ContainerRecord, extra: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    a.extend(rec.spec.labels.clone());
    if !rec.spec.image_ref.is_empty() {
        a.insert("image".into(), rec.spec.image_ref.clone());
    }
    a.insert("name".into(), rec.name.clone());
    a
}

impl ContainerService {
    /// Records a container event.
    pub(super) fn emit(&self, rec: &ContainerRecord, action: &str, extra: &[(&str, String)]) {
        self.events
            .record(CONTAINER_EVENT, action, &rec.id, attributes(rec, extra));
    }

    /// Records a container event for a container named by the host (an attach, berthd's
    /// `restart`): `attributes` are added under the container's own. An unknown container
    /// is not found.
    pub fn record_event(
        &self,
        r: &ContainerRef,
        action: &str,
        extra: &BTreeMap<String, String>,
    ) -> super::Result<()> {
        let rec = self.find(r)?;
        let extra: Vec<(&str, String)> =
            extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.emit(&rec, action, &extra);
        Ok(())
    }

    /// The event log (`crate::events`), shared with the server.
    pub fn events(&self) -> &std::sync::Arc<crate::events::EventLog> {
        &self.events
    }

    fn reported_exit(&self, id: &str) -> u64 {
        if let Some(g) = self.exits_reported.lock().expect("exits").get(id) {
            return *g;
        }
        fs::read_to_string(self.bundle(id).join(EXIT_REPORTED))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn set_reported_exit(&self, id: &str, generation: u64) {
        self.exits_reported
            .lock()
            .expect("exits")
            .insert(id.to_string(), generation);
        let path = self.bundle(id).join(EXIT_REPORTED);
        if let Err(e) = fs::write(&path, generation.to_string()) {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }

    /// A new container's record of reported exits: none yet.
    pub(super) fn exits_start_at_zero(&self, id: &str) {
        self.set_reported_exit(id, 0);
    }

    /// Reports the end of the container's last run (`oom` first when the kernel's OOM killer
    /// struck, then `die` with its exit code) unless it runs or was reported already. A start that failed is no run: nothing is reported for it.
    pub(super) fn report_exit(&self, rec: &ContainerRecord) {
        // One at a time: the monitor and an operation must not both report the same run.
        let _reporting = self.reporting.lock().expect("reporting");
        let view = self.view(&rec.id);
        if view.running || view.generation == 0 || view.generation <= self.reported_exit(&rec.id) {
            return;
        }
        let failed_start = RunState::read(&self.bundle(&rec.id))
            .ok()
            .flatten()
            .is_some_and(|r| r.phase == Phase::StartFailed);
        if !failed_start {
            if view.state.oom_killed {
                self.emit(rec, "oom", &[]);
            }
            let code = view.state.exit_code.unwrap_or(0);
            self.emit(rec, "die", &[("exitCode", code.to_string())]);
        }
        self.set_reported_exit(&rec.id, view.generation);
    }

    /// The monitor's round: reports the runs that ended by themselves.
    pub(super) fn report_exits(&self) {
        let Ok(records) = self.store.all() else {
            return;
        };
        for rec in &records {
            self.report_exit(rec);
        }
    }

    /// At open: containers made before events existed have no record of reported exits; their
    /// past runs are not reported now (only those that end from here on).
    pub(super) fn adopt_exit_records(&self) {
        let Ok(records) = self.store.all() else {
            return;
        };
        for rec in records {
            if self.bundle(&rec.id).join(EXIT_REPORTED).exists() {
                continue;
            }
            let v = self.view(&rec.id);
            let reported = if v.running {
                v.generation.saturating_sub(1)
            } else {
                v.generation
            };
            self.set_reported_exit(&rec.id, reported);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_as_dockerd_fills_them() {
        let mut rec = ContainerRecord {
            id: "c".repeat(64),
            name: "web".into(),
            spec: Default::default(),
            process: Default::default(),
            created: String::new(),
            runtime: "runc".into(),
            layers: vec![],
            mounts: vec![],
        };
        rec.spec.image_ref = "busybox".into();
        rec.spec.labels = [
            ("app".to_string(), "x".to_string()),
            ("name".to_string(), "label-loses".to_string()),
            ("exitCode".to_string(), "label-wins".to_string()),
        ]
        .into();
        let a = attributes(&rec, &[("exitCode", "3".into()), ("signal", "9".into())]);
        assert_eq!(a["image"], "busybox");
        assert_eq!(a["name"], "web");
        assert_eq!(a["app"], "x");
        assert_eq!(a["exitCode"], "label-wins");
        assert_eq!(a["signal"], "9");
    }
}

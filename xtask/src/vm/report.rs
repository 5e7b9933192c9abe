//! The matrix's summary on stdout and the support table for docs/kernels.md.

use std::{fmt::Write as _, fs, io, path::Path};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    kernels::Kernel,
    qemu::{GuestRun, Outcome},
    scenarios::{Column, DEFAULT_MODE, Detector, Scenario},
};

const BEGIN: &str = "<!-- support-table:begin -->";
const END: &str = "<!-- support-table:end -->";
/// Lines of a failed scenario's output repeated in the summary (the full log is on disk).
const FAILURE_TAIL: usize = 40;

pub struct Matrix<'a> {
    pub modes: &'a [String],
    pub scenarios: &'a [&'static Scenario],
    pub runs: &'a [(&'a Kernel, GuestRun)],
}

impl Matrix<'_> {
    fn outcome<'r>(run: &'r GuestRun, mode: &str, scenario: &Scenario) -> Option<&'r Outcome> {
        run.results
            .get(&(mode.to_owned(), scenario.name.to_owned()))
    }

    /// A scenario passes only with a PASS line, from a guest that had no kernel fault, hang or
    /// early stop: a missing line is a failure, never a skip.
    fn passed(run: &GuestRun, mode: &str, scenario: &Scenario) -> bool {
        run.problem.is_none() && Self::outcome(run, mode, scenario).is_some_and(|o| o.passed)
    }

    /// A scenario that ran and failed in a mode in which the guest's `agent check --json` reports
    /// its detector unavailable (tracepoint mode before 6.3): the agent refusing, as it said it
    /// would, not a failure. The support table shows it as `off`, and `--check-support-table`
    /// catches a mode that goes off where it was ✓. Never for the default-mode scenario, whose
    /// point is that the agent runs, nor for a guest that faulted or hung.
    fn off(run: &GuestRun, mode: &str, scenario: &Scenario) -> bool {
        !scenario.default_mode
            && run.problem.is_none()
            && Self::outcome(run, mode, scenario).is_some_and(|o| !o.passed)
            && reported_off(run.check.as_ref(), scenario.detector, mode)
    }

    /// Prints the summary and each failure's output; returns whether everything passed (or
    /// was [off](Self::off)).
    pub fn print_summary(&self) -> bool {
        let mut out = String::new();
        let modes = self.columns();
        let columns: Vec<String> = self
            .runs
            .iter()
            .flat_map(|(k, _)| modes.iter().map(|m| format!("{}/{m}", k.line.name)))
            .collect();
        let width = columns.iter().map(String::len).max().unwrap_or(0).max(4);
        let _ = write!(out, "\n{:<26} {:<18}", "scenario", "detector");
        for c in &columns {
            let _ = write!(out, " {c:>width$}");
        }
        out.push('\n');
        let (mut passed, mut off, mut failed) = (0, 0, 0);
        for sc in self.scenarios {
            let _ = write!(out, "{:<26} {:<18}", sc.name, sc.detector.to_string());
            let runs_in = sc.modes(self.modes);
            for (_, run) in self.runs {
                for mode in &modes {
                    let cell = if !runs_in.contains(mode) {
                        "-"
                    } else if Self::passed(run, mode, sc) {
                        passed += 1;
                        "PASS"
                    } else if Self::off(run, mode, sc) {
                        off += 1;
                        "off"
                    } else {
                        failed += 1;
                        "FAIL"
                    };
                    let _ = write!(out, " {cell:>width$}");
                }
            }
            out.push('\n');
        }

        let _ = writeln!(
            out,
            "\n{:<6} {:<22} {:<20} {:>6} {:>6} {:>7}  problem",
            "kernel", "release", "package version", "check", "init s", "wall s"
        );
        for (kernel, run) in self.runs {
            let booted = run
                .booted_after
                .map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()));
            let _ = writeln!(
                out,
                "{:<6} {:<22} {:<20} {:>6} {booted:>6} {:>7.1}  {}",
                kernel.line.name,
                kernel.release,
                kernel.version,
                run.check_exit.as_deref().unwrap_or("-"),
                run.wall.as_secs_f64(),
                run.problem.as_deref().unwrap_or("-")
            );
            // Where each mode keeps socket state on this kernel, as the guest's check says.
            let stores: Vec<String> = run
                .check
                .as_ref()
                .and_then(|c| c["probe_modes"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|m| Some(format!("{}={}", m["mode"].as_str()?, m["state"].as_str()?)))
                .collect();
            if !stores.is_empty() {
                let _ = writeln!(
                    out,
                    "{:<6} socket state: {}",
                    kernel.line.name,
                    stores.join(" ")
                );
            }
            if let Some(fault) = &run.earlier_fault {
                let _ = writeln!(
                    out,
                    "{:<6} booted twice: the first boot had a {fault}",
                    kernel.line.name
                );
            }
        }

        for (kernel, run) in self.runs {
            for mode in &modes {
                for sc in self.scenarios {
                    if !sc.modes(self.modes).contains(mode)
                        || Self::passed(run, mode, sc)
                        || Self::off(run, mode, sc)
                    {
                        continue;
                    }
                    let _ = writeln!(out, "\n--- FAIL {} {mode} {}", kernel.line.name, sc.name);
                    match Self::outcome(run, mode, sc) {
                        None => {
                            let _ = writeln!(out, "no result line from the guest");
                        }
                        Some(o) if o.passed => {
                            let _ = writeln!(out, "passed, but the guest failed as a whole");
                        }
                        Some(o) => {
                            let lines: Vec<&String> =
                                o.output.iter().filter(|l| !l.trim().is_empty()).collect();
                            let skip = lines.len().saturating_sub(FAILURE_TAIL);
                            for line in &lines[skip..] {
                                let _ = writeln!(out, "| {line}");
                            }
                        }
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "\nvm-test: {passed} passed, {off} off (the detector unavailable in that mode, as the \
             guest's `agent check` says), {failed} failed"
        );
        print!("{out}");
        failed == 0
    }

    /// The summary's modes: the chosen ones, and the default's when a scenario runs in it.
    fn columns(&self) -> Vec<&str> {
        let mut modes: Vec<&str> = self.modes.iter().map(String::as_str).collect();
        if self.scenarios.iter().any(|s| s.default_mode) {
            modes.push(DEFAULT_MODE);
        }
        modes
    }

    /// The markdown table: one row per kernel and mode, one column per detector. The
    /// default-mode scenario is left out: it proves the choice, not a mode.
    fn support_table(&self) -> String {
        let mut t = support_table_head();
        for (kernel, run) in self.runs {
            let upstream = kernel.version.split('-').next().unwrap_or(&kernel.version);
            for mode in self.modes {
                let _ = write!(
                    t,
                    "| {upstream} | `linux-image-{}` {} | {mode} |",
                    kernel.release, kernel.version
                );
                for d in Column::ALL {
                    let scenarios: Vec<_> = self
                        .scenarios
                        .iter()
                        .filter(|s| s.detector == d && !s.default_mode)
                        .collect();
                    let cell = if scenarios.is_empty() {
                        "–"
                    } else if scenarios.iter().all(|s| Self::passed(run, mode, s)) {
                        "✓"
                    } else if reported_off(run.check.as_ref(), d, mode) {
                        "off"
                    } else {
                        "✗"
                    };
                    let _ = write!(t, " {cell} |");
                }
                t.push('\n');
            }
        }
        t
    }

    /// Writes the support table to `path`, or between the markers when the file has them.
    pub fn write_support_table(&self, path: &Path) -> Result<()> {
        let table = self.support_table();
        let existing = match fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let text = match existing {
            None => table,
            Some(text) => replace_between_markers(&text, &table).with_context(|| {
                format!(
                    "{} exists but has no {BEGIN} … {END} section",
                    path.display()
                )
            })?,
        };
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

impl Matrix<'_> {
    /// The rows of `path`'s support table (between the markers) that differ from this run's,
    /// as `-`/`+` lines; empty when they are the same.
    pub fn support_table_differences(&self, path: &Path) -> Result<Vec<String>> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let written = between_markers(&text)
            .with_context(|| format!("{} has no {BEGIN} … {END} section", path.display()))?;
        Ok(differences(written, &self.support_table()))
    }
}

/// `-` for each line of `old` that `new` lacks, `+` for each line of `new` that `old` lacks,
/// rows compared by kernel line, mode and cells: a suite that moved on to a newer kernel
/// package of the same line (a fresh download in CI) changes no result.
fn differences(old: &str, new: &str) -> Vec<String> {
    let rows = |t: &str| -> Vec<(String, String)> {
        t.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| (result_of(l), l.to_owned()))
            .collect()
    };
    let (old, new) = (rows(old), rows(new));
    let has = |rows: &[(String, String)], key: &str| rows.iter().any(|(k, _)| k == key);
    let gone = old
        .iter()
        .filter(|(k, _)| !has(&new, k))
        .map(|(_, l)| format!("- {l}"));
    let came = new
        .iter()
        .filter(|(k, _)| !has(&old, k))
        .map(|(_, l)| format!("+ {l}"));
    gone.chain(came).collect()
}

/// A table row without its kernel's exact release and package: `5.10 | fentry | ✓ | …`.
fn result_of(row: &str) -> String {
    let cells: Vec<&str> = row
        .trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    let line = cells.first().and_then(|release| {
        let mut parts = release.split('.');
        let (major, minor) = (parts.next()?, parts.next()?);
        (major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok())
            .then(|| format!("{major}.{minor}"))
    });
    match line {
        Some(line) if cells.len() > 2 => std::iter::once(line.as_str())
            .chain(cells[2..].iter().copied())
            .collect::<Vec<_>>()
            .join(" | "),
        _ => row.trim().to_owned(),
    }
}

/// Whether the guest's `agent check --json` said that `detector` is unavailable in `mode` on
/// that kernel (its `detectors` list: `{"name": "unanswered_close", "available": true, "modes":
/// ["fentry", "kprobe"]}`). Such a failure is the agent degrading as it said it would, not a
/// broken mode; no report, or anything unparsable in it, counts as not reported, so the cell
/// stays ✗.
///
/// A mode that gives no detector at all does not run, so it has no false positives to count
/// either: that column is off too.
fn reported_off(check: Option<&Value>, column: Column, mode: &str) -> bool {
    let detector = match column {
        Column::Loss(d) => d,
        Column::NoFalsePositives => {
            return Column::ALL
                .iter()
                .filter(|c| **c != Column::NoFalsePositives)
                .all(|c| reported_off(check, *c, mode));
        }
    };
    let named = |d: &&Value| d["name"].as_str().and_then(Detector::from_name) == Some(detector);
    let Some(entry) = check
        .and_then(|c| c["detectors"].as_array())
        .and_then(|all| all.iter().find(named))
    else {
        return false;
    };
    match (entry["available"].as_bool(), entry["modes"].as_array()) {
        (Some(false), _) => true,
        (Some(true), Some(modes)) => !modes.iter().any(|m| m == mode),
        _ => false,
    }
}

/// The support table's heading row and separator, each with its newline.
fn support_table_head() -> String {
    let mut t = String::from("| kernel | Debian package | probe mode |");
    for d in Column::ALL {
        let _ = write!(t, " {} |", d.heading());
    }
    t.push_str("\n|---|---|---|");
    t.push_str(&"---|".repeat(Column::ALL.len()));
    t.push('\n');
    t
}

fn between_markers(text: &str) -> Result<&str> {
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!("markers missing");
    };
    if end < begin {
        bail!("{END} comes before {BEGIN}");
    }
    Ok(&text[begin + BEGIN.len()..end])
}

fn replace_between_markers(text: &str, table: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!("markers missing");
    };
    if end < begin {
        bail!("{END} comes before {BEGIN}");
    }
    let head = &text[..begin + BEGIN.len()];
    let tail = &text[end..];
    Ok(format!("{head}\n{table}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `agent check --json`'s detector list, from (name, modes) pairs; no modes: unavailable.
    fn check_json(detectors: &[(&str, &[&str])]) -> Value {
        let detectors: Vec<Value> = detectors
            .iter()
            .map(|(name, modes)| {
                serde_json::json!({"name": name, "available": !modes.is_empty(), "modes": modes})
            })
            .collect();
        serde_json::json!({ "detectors": detectors })
    }

    #[test]
    fn detectors_reported_off_by_agent_check() {
        let check = check_json(&[
            ("unanswered_close", &["fentry", "kprobe"]),
            ("write_after_close", &[]),
            ("undelivered_bytes", &["fentry", "kprobe", "tracepoint"]),
        ]);
        let off = |d, m| reported_off(Some(&check), d, m);
        assert!(!off(Column::Loss(Detector::UnansweredClose), "fentry"));
        assert!(off(Column::Loss(Detector::UnansweredClose), "tracepoint"));
        assert!(off(Column::Loss(Detector::WriteAfterClose), "fentry"));
        assert!(!off(Column::Loss(Detector::UndeliveredBytes), "tracepoint"));
        assert!(!off(Column::NoFalsePositives, "tracepoint"));
        // A mode with every detector off does not run at all.
        let none = check_json(&[
            ("unanswered_close", &["fentry"]),
            ("write_after_close", &["fentry"]),
            ("undelivered_bytes", &["fentry"]),
        ]);
        assert!(reported_off(
            Some(&none),
            Column::NoFalsePositives,
            "tracepoint"
        ));
        assert!(!reported_off(
            Some(&none),
            Column::NoFalsePositives,
            "fentry"
        ));
        assert!(!reported_off(
            None,
            Column::Loss(Detector::UnansweredClose),
            "fentry"
        ));
        // Nothing parsable about the detector: not reported.
        let odd = serde_json::json!({"detectors": [{"name": "unanswered_close", "modes": []}]});
        assert!(!reported_off(
            Some(&odd),
            Column::Loss(Detector::UnansweredClose),
            "fentry"
        ));
        assert!(!reported_off(
            Some(&serde_json::json!([])),
            Column::Loss(Detector::UnansweredClose),
            "fentry"
        ));
    }

    #[test]
    fn a_failure_is_off_only_where_agent_check_said_so() {
        use std::{collections::BTreeMap, time::Duration};

        use crate::vm::scenarios::SCENARIOS;
        let seed = SCENARIOS
            .iter()
            .find(|s| s.name == "seed-go-write-timeout")
            .unwrap();
        let default = SCENARIOS.iter().find(|s| s.default_mode).unwrap();
        let failed = || Outcome {
            passed: false,
            output: Vec::new(),
        };
        let mut results = BTreeMap::new();
        for mode in ["fentry", "tracepoint", DEFAULT_MODE] {
            for sc in [seed, default] {
                results.insert((mode.to_owned(), sc.name.to_owned()), failed());
            }
        }
        let mut run = GuestRun {
            results,
            problem: None,
            wall: Duration::ZERO,
            booted_after: None,
            check_exit: Some("0".to_owned()),
            check: Some(check_json(&[("unanswered_close", &["fentry", "kprobe"])])),
            earlier_fault: None,
        };
        assert!(Matrix::off(&run, "tracepoint", seed));
        assert!(!Matrix::off(&run, "fentry", seed));
        // No result line: a failure, whatever check says.
        assert!(!Matrix::off(&run, "kprobe", seed));
        assert!(!Matrix::off(&run, DEFAULT_MODE, default));
        run.problem = Some("kernel fault".to_owned());
        assert!(!Matrix::off(&run, "tracepoint", seed));
    }

    #[test]
    fn only_the_marked_section_changes() {
        let readme = format!("intro\n{BEGIN}\nold table\n{END}\noutro\n");
        let new = replace_between_markers(&readme, "| new |\n").unwrap();
        assert_eq!(new, format!("intro\n{BEGIN}\n| new |\n{END}\noutro\n"));
        assert_eq!(replace_between_markers(&new, "| new |\n").unwrap(), new);
        assert!(replace_between_markers("no markers", "x").is_err());
        assert_eq!(between_markers(&new).unwrap(), "\n| new |\n");
    }

    /// The file `cargo xtask test` checks (docs/kernels.md) has the markers, and between them a
    /// table this code writes: its heading, and one row per kernel line and mode.
    #[test]
    fn the_checked_file_holds_the_support_table() {
        let path = crate::workspace::workspace_root().join(crate::vm::SUPPORT_TABLE);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let table = between_markers(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let body = table
            .trim_start_matches('\n')
            .strip_prefix(support_table_head().as_str())
            .unwrap_or_else(|| panic!("{}: the table's heading differs", path.display()));
        let rows: Vec<String> = body.lines().map(result_of).collect();
        let mut expected = Vec::new();
        for line in crate::vm::kernels::KERNELS {
            for mode in crate::vm::MODES {
                expected.push(format!("{} | {mode}", line.name));
            }
        }
        let found: Vec<String> = rows
            .iter()
            .map(|r| r.split(" | ").take(2).collect::<Vec<_>>().join(" | "))
            .collect();
        assert_eq!(found, expected, "{}", path.display());
    }

    #[test]
    fn differences_name_the_rows_that_changed() {
        let old = "| a | ✓ |\n| b | ✓ |\n";
        assert!(differences(old, old).is_empty());
        assert_eq!(
            differences(old, "| a | ✓ |\n| b | ✗ |\n"),
            ["- | b | ✓ |", "+ | b | ✗ |"]
        );
    }

    #[test]
    fn a_newer_package_of_the_same_kernel_line_is_no_difference() {
        let old = "| 6.1.176 | `linux-image-6.1.0-50-amd64` 6.1.176-1 | fentry | ✓ | ✓ |\n";
        let newer = "| 6.1.180 | `linux-image-6.1.0-51-amd64` 6.1.180-1 | fentry | ✓ | ✓ |\n";
        assert!(differences(old, newer).is_empty());
        let broken = "| 6.1.180 | `linux-image-6.1.0-51-amd64` 6.1.180-1 | fentry | ✓ | ✗ |\n";
        assert_eq!(differences(old, broken).len(), 2);
    }
}

//! `federator-chaos`: benchmarks (and, later, fault-injection runs) against real
//! processes on loopback. Figures go to stdout, progress to stderr.
//!
//! Here: running a command. Its flags and settings are in `cli`.

mod cli;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use federator_chaos::bench::attack::{AttackReport, run_attack};
use federator_chaos::bench::progress::Progress;
use federator_chaos::bench::propagation::report::PropagationReport;
use federator_chaos::bench::propagation::run_propagation;
use federator_chaos::bench::report::{Machine, write_markdown, write_markdown_section};
use federator_chaos::bench::scale::{ScaleReport, run_scale};
use federator_chaos::bench::snapshot::report::SnapshotReport;
use federator_chaos::bench::snapshot::run_snapshot;
use federator_chaos::bench::soak::{SoakReport, run_soak};
use federator_chaos::bench::{attack, propagation, run_raft, scale, snapshot, soak};
use federator_chaos::run;

use self::cli::{AllArgs, Bench, Cli, Command, RaftArgs, ReportFormat, RunArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let run = async {
        match &cli.command {
            Command::Bench(Bench::All(args)) => bench_all(args).await,
            Command::Bench(one) => bench(one).await,
            Command::List => {
                for s in run::SCENARIOS {
                    println!("{:<20} {}", s.name, s.about);
                }
                Ok(())
            }
            Command::Run(args) => chaos_run(args).await,
        }
    };
    // On ctrl-c the run is dropped, and with it the process groups, which kills them.
    let outcome = tokio::select! {
        result = run => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };
    outcome.unwrap_or_else(|| {
        eprintln!("interrupted; every process the run started was killed");
        std::process::exit(130)
    })
}

async fn chaos_run(args: &RunArgs) -> anyhow::Result<()> {
    let names: Vec<String> = if args.short {
        run::SHORT.iter().map(ToString::to_string).collect()
    } else if args.scenarios.iter().any(|s| s == "all") {
        run::SCENARIOS.iter().map(|s| s.name.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    if names.is_empty() {
        anyhow::bail!("name a scenario (see `federator-chaos list`), `all`, or pass --short");
    }
    let scenarios = names
        .iter()
        .map(|n| {
            run::find(n)
                .with_context(|| format!("no scenario {n:?}; `federator-chaos list` shows them"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seed = args
        .seed
        .unwrap_or_else(|| u64::try_from(federator::clock::unix_now()).unwrap_or(1).max(1));
    let duration = if args.short { Duration::from_secs(15) } else { args.duration };
    let progress = Progress::new();
    let mut reports = Vec::new();
    for scenario in scenarios {
        let config = run::RunConfig {
            seed,
            duration,
            replicas: args.replicas,
            keep_dir: args.keep_dir.clone(),
            workload: run::workload::WorkloadConfig::default(),
        };
        let step = progress.step(format!("{} (seed {seed})", scenario.name));
        let report = run::run(scenario, &config, &|m: &str| {
            step.set_message(format!("{}: {m}", scenario.name))
        })
        .await?;
        step.finish_and_clear();
        progress.println(report.text());
        reports.push(report);
    }
    let rendered = match args.format {
        ReportFormat::Text => reports.iter().map(run::report::RunReport::text).collect::<String>(),
        ReportFormat::Json => serde_json::to_string_pretty(&reports)?,
        ReportFormat::Junit => run::report::junit(&reports),
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, rendered).with_context(|| format!("writing {}", path.display()))?
        }
        None if matches!(args.format, ReportFormat::Text) => {}
        None => println!("{rendered}"),
    }
    let failed: Vec<&str> =
        reports.iter().filter(|r| !r.passed()).map(|r| r.scenario.as_str()).collect();
    if !failed.is_empty() {
        eprintln!("broken promises in: {} (seed {seed})", failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}

async fn bench_raft(args: &RaftArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let machine = Machine::detect();
    let progress = Progress::new();
    let report = run_raft(&config, &progress).await?;
    println!("{}", report.text_table());
    if let Some(path) = &args.out.markdown {
        // The plot goes beside the markdown file, linked by a relative path.
        let dir = path.parent().unwrap_or_else(|| std::path::Path::new(""));
        let plot = dir.join(RAFT_PLOT);
        if let Some(parent) = plot.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&plot, report.latency_plot())
            .with_context(|| format!("writing {}", plot.display()))?;
        let section = report.markdown_section(&machine, &command_line(), &now(), Some(RAFT_PLOT));
        write_markdown(path, &section).with_context(|| format!("writing {}", path.display()))?;
        progress.println(format!(
            "wrote the results into {} and the latency plot into {}",
            path.display(),
            plot.display()
        ));
    }
    Ok(())
}

/// Runs `bench raft`, `bench propagation`, `bench snapshot`, `bench scale`, `bench soak`
/// and `bench attack` one after the other, each parsed from its own command line so it
/// gets exactly its defaults.
async fn bench_all(args: &AllArgs) -> anyhow::Result<()> {
    for argv in all_command_lines(args) {
        eprintln!("== {}", argv[1..].join(" "));
        let cli = Cli::try_parse_from(&argv).context("building the benchmark's command line")?;
        let outcome = match &cli.command {
            Command::Bench(one) if !matches!(one, Bench::All(_)) => bench(one).await,
            _ => unreachable!("only single benchmarks are listed"),
        };
        outcome.with_context(|| argv[1..].join(" "))?;
    }
    Ok(())
}

/// The command lines `bench all` runs.
fn all_command_lines(args: &AllArgs) -> Vec<Vec<String>> {
    let benchmarks: [&[&str]; 6] = [
        &["raft", "--clients", "1,16,64,256,1000", "--trials", "20"],
        &["propagation"],
        &["snapshot"],
        &["scale"],
        &["soak"],
        &["attack"],
    ];
    benchmarks
        .iter()
        .map(|bench| {
            let mut argv = vec!["federator-chaos".to_string(), "bench".to_string()];
            argv.extend(bench.iter().map(ToString::to_string));
            if args.smoke {
                argv.push("--smoke".into());
            }
            if let Some(path) = &args.markdown {
                argv.push("--markdown".into());
                argv.push(path.display().to_string());
            }
            argv
        })
        .collect()
}

/// Where `bench raft --markdown FILE` puts its latency plot, relative to FILE's directory.
const RAFT_PLOT: &str = "chaos/results/raft-latency.svg";

/// Runs one benchmark other than `bench all`.
async fn bench(command: &Bench) -> anyhow::Result<()> {
    match command {
        Bench::Raft(args) => bench_raft(args).await,
        Bench::Propagation(args) => {
            let config = args.config()?;
            reported(
                args.out.markdown.as_deref(),
                (propagation::report::SECTION_BEGIN, propagation::report::SECTION_END),
                async |progress| run_propagation(&config, progress).await,
                PropagationReport::text,
                PropagationReport::markdown_section,
            )
            .await
        }
        Bench::Snapshot(args) => {
            let config = args.config()?;
            reported(
                args.out.markdown.as_deref(),
                (snapshot::report::SECTION_BEGIN, snapshot::report::SECTION_END),
                async |progress| run_snapshot(&config, progress).await,
                SnapshotReport::text,
                SnapshotReport::markdown_section,
            )
            .await
        }
        Bench::Scale(args) => {
            let config = args.config()?;
            reported(
                args.out.markdown.as_deref(),
                (scale::report::SECTION_BEGIN, scale::report::SECTION_END),
                async |progress| run_scale(&config, progress).await,
                ScaleReport::text,
                ScaleReport::markdown_section,
            )
            .await
        }
        Bench::Soak(args) => {
            let config = args.config()?;
            reported(
                args.out.markdown.as_deref(),
                (soak::report::SECTION_BEGIN, soak::report::SECTION_END),
                async |progress| run_soak(&config, progress).await,
                SoakReport::text,
                SoakReport::markdown_section,
            )
            .await
        }
        Bench::Attack(args) => {
            let config = args.config()?;
            reported(
                args.out.markdown.as_deref(),
                (attack::SECTION_BEGIN, attack::SECTION_END),
                async |progress| run_attack(&config, progress).await,
                AttackReport::text,
                AttackReport::markdown_section,
            )
            .await
        }
        Bench::All(_) => unreachable!("`bench all` runs the others (see bench_all)"),
    }
}

/// Runs a benchmark (`run`, with the progress display), prints its report (`text`) and,
/// with `--markdown FILE`, writes its section (built by `section` from the machine and
/// this run's command line and date) between `markers` in FILE.
async fn reported<R>(
    markdown: Option<&std::path::Path>,
    markers: (&str, &str),
    run: impl AsyncFnOnce(&Progress) -> anyhow::Result<R>,
    text: impl FnOnce(&R) -> String,
    section: impl FnOnce(&R, &Machine, &str, &str) -> String,
) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let progress = Progress::new();
    let report = run(&progress).await?;
    println!("{}", text(&report));
    if let Some(path) = markdown {
        let section = section(&report, &machine, &command_line(), &now());
        write_markdown_section(path, markers.0, markers.1, &section)
            .with_context(|| format!("writing {}", path.display()))?;
        progress.println(format!("wrote the results into {}", path.display()));
    }
    Ok(())
}

/// How this run was started, as a command to copy.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = if cfg!(debug_assertions) { "" } else { " --release" };
    // A binary under the working directory is shown relative to it: the command is
    // copied from BENCHMARKS.md into another checkout.
    let env = std::env::var("FEDERATOR_BIN")
        .map(|bin| {
            let cwd = std::env::current_dir().unwrap_or_default();
            let shown = std::path::Path::new(&bin)
                .strip_prefix(&cwd)
                .map_or_else(|_| bin.clone(), |relative| relative.display().to_string());
            format!("FEDERATOR_BIN={shown} ")
        })
        .unwrap_or_default();
    format!("{env}cargo run -p federator-chaos{profile} -- {}", args.join(" "))
}

/// The current time in UTC, as `date` prints it.
fn now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(date unknown)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_all_runs_each_benchmark_with_its_own_defaults() {
        let cli = Cli::try_parse_from([
            "federator-chaos",
            "bench",
            "all",
            "--smoke",
            "--markdown",
            "B.md",
        ])
        .expect("parses");
        let Command::Bench(Bench::All(args)) = &cli.command else { panic!("{cli:?}") };
        let lines = all_command_lines(args);
        assert_eq!(lines.len(), 6);
        for argv in &lines {
            assert_eq!(&argv[argv.len() - 3..], ["--smoke", "--markdown", "B.md"], "{argv:?}");
            let parsed = Cli::try_parse_from(argv).expect("each command line parses");
            assert!(matches!(parsed.command, Command::Bench(_)));
        }
        let Command::Bench(Bench::Raft(raft)) =
            Cli::try_parse_from(&lines[0]).expect("raft").command
        else {
            panic!("raft first")
        };
        assert_eq!(raft.clients, [1, 16, 64, 256, 1000]);
        assert_eq!(raft.trials, 20);
    }
}

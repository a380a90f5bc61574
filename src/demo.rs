//! `sluice demo`: runs the quickstart pipeline on the sample events shipped inside the binary,
//! with no cloud and no emulator, and says where the outputs went.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::cli::{EXIT_FAILED, EXIT_OK};

const PIPELINE: &str = include_str!("../pipelines/recipe_quickstart.yaml");
const EVENTS: &str = include_str!("../pipelines/data/recipe_events.jsonl");

pub async fn run(out: &Path) -> u8 {
    match try_run(out).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("sluice demo: {e}");
            EXIT_FAILED
        }
    }
}

async fn try_run(out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let input = out.join("recipe_events.jsonl");
    std::fs::write(&input, EVENTS).map_err(|e| format!("cannot write {}: {e}", input.display()))?;
    let pipeline_file = out.join("recipe_quickstart.yaml");
    std::fs::write(&pipeline_file, PIPELINE)
        .map_err(|e| format!("cannot write {}: {e}", pipeline_file.display()))?;
    let vars = BTreeMap::from([
        ("input".to_string(), input.display().to_string()),
        ("output_dir".to_string(), out.display().to_string()),
    ]);
    let spec = crate::config::load(&pipeline_file, &vars).map_err(|d| d.to_string())?;
    let graph = crate::pipeline::validate(&spec).map_err(|d| d.to_string())?;
    println!(
        "Sluice demo: {} sample recipe events through {}",
        EVENTS.lines().count(),
        pipeline_file.display()
    );
    let report = crate::cli::run(&spec, &graph, None, None)
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", crate::cli::summary(&report));
    let count = |name: &str| {
        report
            .stats
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, s)| s.rows_in.load(Ordering::Relaxed))
    };
    println!(
        "\n{} clean events and {} dead letters (malformed JSON or failed validation, each with its payload and error).",
        count("WriteCleanEvents"),
        count("WriteDeadLetters")
    );
    println!(
        "Next: sluice explain {}   |   sluice test {}",
        pipeline_file.display(),
        pipeline_file.display()
    );
    Ok(())
}

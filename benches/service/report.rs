//! The one table the benchmark prints.

/// One measurement beside its baseline.
pub struct Row {
    pub id: &'static str,
    pub measurement: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub met: bool,
    /// Printed under the table: where the time went.
    pub detail: Option<String>,
}

/// Prints the rows as a Markdown table.
pub fn print(rows: &[Row]) {
    println!();
    println!("| # | measurement | result | baseline (same run) | ratio | target | met |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.id,
            row.measurement,
            row.value,
            row.baseline,
            row.ratio,
            row.target,
            if row.met { "yes" } else { "**no**" }
        );
    }
    println!();
    for row in rows {
        if let Some(detail) = &row.detail {
            println!("- {}: {detail}", row.id);
        }
    }
}

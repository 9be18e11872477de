//! Progress bars for the long stages (indicatif on stderr, hidden when stderr is not a
//! terminal, so logs and tests see only the lines).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items of `unit` (shards, images, steps).
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template =
        format!("{{bar:30}} {{pos}}/{{len}} {unit} {{msg}} [{{elapsed_precise}}, eta {{eta}}]");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A line above the bar, or on stdout when the bar is hidden.
pub fn println(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        println!("{}", line.as_ref());
    } else {
        bar.println(line.as_ref());
    }
}

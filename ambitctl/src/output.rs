//! Output formats (`-o table|json|yaml`) and a plain column-aligned table printer.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Prints `value` as pretty JSON or YAML; `Table` callers print their own table first.
pub fn print_structured<T: Serialize>(format: Format, value: &T) {
    match format {
        Format::Json | Format::Table => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("values serialize to JSON")
        ),
        Format::Yaml => print!(
            "{}",
            serde_yaml::to_string(value).expect("values serialize to YAML")
        ),
    }
}

/// A table: header row plus rows, left-aligned columns separated by three spaces (like kubectl).
#[derive(Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate().take(cols) {
                if i + 1 == cols {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}   ", w = widths[i]));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(&self.header);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["NAME", "READY"]);
        t.row(vec!["a-long-name".into(), "True".into()]);
        t.row(vec!["b".into(), "False".into()]);
        assert_eq!(
            t.render(),
            "NAME          READY\na-long-name   True\nb             False\n"
        );
    }
}

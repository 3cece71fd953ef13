//! The report as one self-contained HTML page: the numbers travel as JSON inside the page and a
//! small script draws the tables and SVG bar charts from them, so the page needs no server and
//! no network. Text is only ever set with `textContent`, and `<` is escaped in the JSON, so a
//! device type such as `</script>` stays text.

use super::Report;

/// The page for `report`.
pub fn render(report: &Report) -> String {
    let data = serde_json::to_string(report)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c");
    TEMPLATE.replace("/*DATA*/", &data)
}

const TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sqs2pg report</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
  h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
  table { border-collapse: collapse; } td, th { padding: 0.2rem 0.8rem; text-align: left; }
  td.n { text-align: right; font-variant-numeric: tabular-nums; }
  svg text { font-size: 12px; }
</style>
</head>
<body>
<h1 id="title">sqs2pg report</h1>
<table id="totals"></table>
<h2>Rows per day</h2><svg id="per-day"></svg>
<h2>Rows per device type</h2><svg id="per-device"></svg>
<h2>Rejected messages by reason</h2><table id="rejected"></table>
<script type="application/json" id="data">/*DATA*/</script>
<script>
"use strict";
const report = JSON.parse(document.getElementById("data").textContent);
const svgNs = "http://www.w3.org/2000/svg";
function cell(row, text, numeric) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (numeric) td.className = "n";
  row.appendChild(td);
}
function rows(table, items) {
  for (const [label, value] of items) {
    const tr = document.createElement("tr");
    cell(tr, label, false);
    cell(tr, value, true);
    table.appendChild(tr);
  }
}
function bars(svg, items) {
  const max = Math.max(1, ...items.map(([, n]) => n));
  const width = 480, label = 160, height = 22;
  svg.setAttribute("width", label + width + 80);
  svg.setAttribute("height", Math.max(1, items.length) * height);
  items.forEach(([name, n], i) => {
    const y = i * height;
    const t = document.createElementNS(svgNs, "text");
    t.setAttribute("x", 0); t.setAttribute("y", y + 15);
    t.textContent = name === null ? "(none)" : name;
    const r = document.createElementNS(svgNs, "rect");
    r.setAttribute("x", label); r.setAttribute("y", y + 3);
    r.setAttribute("height", height - 6);
    r.setAttribute("width", Math.max(1, Math.round(width * n / max)));
    r.setAttribute("fill", "#4a7ab5");
    const v = document.createElementNS(svgNs, "text");
    v.setAttribute("class", "value");
    v.setAttribute("x", label + Math.round(width * n / max) + 6); v.setAttribute("y", y + 15);
    v.textContent = String(n);
    svg.append(t, r, v);
  });
}
document.getElementById("title").textContent = "sqs2pg report: " + report.table;
rows(document.getElementById("totals"), [
  ["rows", report.rows],
  ["distinct masked ips", report.distinct_masked_ips],
  ["masked ips seen more than once", report.repeated_ips],
  ["distinct masked devices", report.distinct_masked_devices],
  ["masked devices seen more than once", report.repeated_devices],
]);
bars(document.getElementById("per-day"), report.per_day);
bars(document.getElementById("per-device"), report.per_device_type);
rows(document.getElementById("rejected"), report.rejected);
document.body.setAttribute("data-rendered", "yes");
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_close_the_script() {
        let report = Report {
            per_device_type: vec![(Some("</script><b>x".into()), 1)],
            ..Report::default()
        };
        let page = render(&report);
        assert_eq!(page.matches("</script>").count(), 2, "only the page's own");
        assert!(page.contains("\\u003c/script>\\u003cb>x"));
    }
}

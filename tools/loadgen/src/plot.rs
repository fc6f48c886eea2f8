//! plot.png: throughput (top) and latency percentiles (bottom) per second.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::Report;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    // plotters draws text with ab_glyph, from a font we hand it.
    let font = std::fs::read(FONT).with_context(|| {
        format!("{FONT} (Debian package fonts-dejavu-core) is needed for the plot")
    })?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;

    let series = &report.series;
    let seconds = series.len().max(2) as u64;
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);

    let most = series
        .iter()
        .map(|p| p.accepted.max(p.finished))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(&top)
        .caption("Orders per second", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0..seconds, 0..(most + most / 10))?;
    chart
        .configure_mesh()
        .x_desc("second")
        .y_desc("orders/s")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            series.iter().map(|p| (p.second, p.accepted)),
            &BLUE,
        ))?
        .label("accepted (202)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            series.iter().map(|p| (p.second, p.finished)),
            &GREEN,
        ))?
        .label("finished (CONFIRMED / REJECTED)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let slowest = series
        .iter()
        .map(|p| p.e2e_p99_ms.max(p.post_p99_ms))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("Latency by second sent (ms)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0..seconds, (0.1f64..slowest * 1.2).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("second")
        .y_desc("ms (log)")
        .draw()?;
    for (label, color, value) in [
        (
            "POST p99",
            RED,
            (|p: &crate::report::SecondPoint| p.post_p99_ms) as fn(&_) -> f64,
        ),
        ("end-to-end p50", CYAN, |p| p.e2e_p50_ms),
        ("end-to-end p99", MAGENTA, |p| p.e2e_p99_ms),
    ] {
        chart
            .draw_series(LineSeries::new(
                series
                    .iter()
                    .filter(|p| value(p) > 0.0)
                    .map(|p| (p.second, value(p))),
                &color,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

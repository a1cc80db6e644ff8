//! The `--plot` picture: a grid of small histograms (3 per row), one per SteerLM
//! attribute, in one SVG or PNG file.
//!
//! Text never touches system fonts: plotters is built with its pure-Rust
//! `ab_glyph` font backend (no `ttf` feature, hence no font-kit, fontconfig or
//! freetype) and we register an embedded Noto Sans face (SIL OFL 1.1, from the
//! `notosans` crate). The SVG path emits `<text>` elements that the viewer
//! renders with its own font; plotters still measures text with the embedded
//! face for layout. The PNG path rasterises glyphs with `ab_glyph`.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use super::glyph_text::GlyphText;

/// Labels of the six bars: the attribute values 0..=4, then "missing".
const BUCKET_LABELS: [&str; 6] = ["0", "1", "2", "3", "4", "n/a"];

/// Font family every text style below asks for; we register it ourselves.
const FONT_FAMILY: &str = "sans-serif";
/// The one embedded face (Noto Sans Regular, SIL Open Font License 1.1).
pub(super) const FONT_TTF: &[u8] = notosans::REGULAR_TTF;

const BAR_COLOR: RGBColor = RGBColor(0x4c, 0x72, 0xb0);
const MISSING_COLOR: RGBColor = RGBColor(0xa0, 0xa0, 0xa0);
const TEXT_COLOR: RGBColor = RGBColor(0x33, 0x33, 0x33);

/// Draw one picture of histograms to `path`, as SVG or PNG depending on its
/// extension (case-insensitive `.svg` / `.png`; anything else is an error).
///
/// `attributes` holds `(name, counts)`: `counts[0..5]` are the numbers of
/// turns whose value is 0..=4, `counts[5]` the turns where it is missing.
/// They are laid out 3 per row in the given order (9 attributes -> 3x3).
/// `size` is the picture's `(width, height)` in pixels.
pub fn draw_histograms(path: &Path, title: &str, attributes: &[(&str, [u64; 6])], size: (u32, u32)) -> Result<()> {
    ensure_font_registered()?;
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw_grid(&root, title, attributes)?;
                root.present().map_err(|e| anyhow!("{e}"))?;
            }
            crate::output::write_file(path, svg.as_bytes())?;
        }
        Some("png") => {
            let (w, h) = size;
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                // Render into an in-memory RGB8 buffer (no `image` crate);
                // the backend borrows `rgb` mutably until this block ends.
                let backend = GlyphText(BitMapBackend::with_buffer(&mut rgb, size));
                let root = backend.into_drawing_area();
                draw_grid(&root, title, attributes)?;
                root.present().map_err(|e| anyhow!("{e}"))?;
            }
            write_png(path, size, &rgb).with_context(|| format!("writing {}", path.display()))?;
        }
        _ => check_extension(path)?,
    }
    Ok(())
}

/// Refuses a `--plot` name that is neither `.svg` nor `.png`, before any work.
pub fn check_extension(path: &Path) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") | Some("png") => Ok(()),
        _ => bail!("--plot {}: the name must end in .svg or .png", path.display()),
    }
}

/// Register the embedded face under `FONT_FAMILY`, once per process.
/// plotters' `ab_glyph` backend knows no font until one is registered, and
/// it needs one even for SVG output (to measure labels for the layout).
/// Bold/italic requests fall back to this regular face inside plotters.
fn ensure_font_registered() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF).is_ok()) {
        Ok(())
    } else {
        bail!("embedded Noto Sans font could not be parsed")
    }
}

/// Encode a tightly packed RGB8 buffer as a PNG file.
fn write_png(path: &Path, (w, h): (u32, u32), rgb: &[u8]) -> Result<()> {
    let mut encoded = Vec::new();
    let mut enc = png::Encoder::new(&mut encoded, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    crate::output::write_file(path, &encoded)
}

/// Backend-independent drawing: title on top, then the grid of histograms.
fn draw_grid<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    attributes: &[(&str, [u64; 6])],
) -> Result<()> {
    // plotters' errors wrap the backend's error type; flatten them to text so
    // this needs no Send/Sync/'static bounds on DB::ErrorType.
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");

    root.fill(&WHITE).map_err(err)?;
    // Scale all text and margins with the picture height (900 px -> 31/22/15).
    let (_, h) = root.dim_in_pixel();
    let px = |frac: f64| ((f64::from(h) * frac).round() as i32).max(8);

    let body = root.titled(title, (FONT_FAMILY, px(0.034)).into_font().color(&BLACK)).map_err(err)?;
    let cols = 3;
    let rows = attributes.len().div_ceil(cols).max(1);
    let cells = body.margin(0, px(0.01), px(0.01), px(0.01)).split_evenly((rows, cols));

    for ((name, counts), cell) in attributes.iter().zip(&cells) {
        draw_one(cell, name, counts, px(0.024), px(0.017)).map_err(err)?;
    }
    Ok(())
}

/// One small histogram: caption, six labelled bars, a count above each bar.
fn draw_one<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    counts: &[u64; 6],
    caption_px: i32,
    label_px: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    // Headroom above the tallest bar for its count label; the +1 keeps the
    // y range non-empty when every count is zero.
    let max = counts.iter().copied().max().unwrap_or(0);
    let y_top = max + max / 6 + 1;

    // Make the y label column as wide as the widest tick label can get.
    let label_style = TextStyle::from((FONT_FAMILY, label_px).into_font()).color(&TEXT_COLOR);
    let (y_label_w, _) = area.estimate_text_size(&y_top.to_string(), &label_style)?;

    // `(0..5).into_segmented()` has 6 segments, 0..=5 (the end is included).
    let mut chart = ChartBuilder::on(area)
        .caption(name, (FONT_FAMILY, caption_px))
        .margin(label_px / 2)
        .x_label_area_size(label_px * 2)
        .y_label_area_size(y_label_w as i32 + label_px)
        .build_cartesian_2d((0u32..5).into_segmented(), 0u64..y_top)?;

    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .y_labels(5)
        .x_labels(6)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => BUCKET_LABELS.get(*i as usize).copied().unwrap_or("").to_owned(),
            _ => String::new(),
        })
        .label_style(label_style.clone())
        .draw()?;

    chart.draw_series(
        Histogram::vertical(&chart)
            .margin((label_px / 2).max(2) as u32)
            // `data` turns each key into `SegmentValue::Exact(key)`.
            .style_func(|x, _| {
                let is_missing = matches!(x, SegmentValue::Exact(5) | SegmentValue::CenterOf(5));
                if is_missing { MISSING_COLOR } else { BAR_COLOR }.filled()
            })
            .data((0u32..6).zip(counts.iter().copied())),
    )?;

    // Count above each non-empty bar, centred on it, bottom-anchored.
    let count_style = label_style.pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(
        (0u32..6)
            .zip(counts.iter().copied())
            .filter(|&(_, c)| c > 0)
            .map(|(i, c)| Text::new(c.to_string(), (SegmentValue::CenterOf(i), c), count_style.clone())),
    )?;
    Ok(())
}

//! A raster backend wrapper that draws text itself.

use ab_glyph::{Font, FontRef, ScaleFont};
use plotters::style::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind, FontTransform,
};
use std::sync::OnceLock;

use super::plot::FONT_TTF;

/// Wraps a raster backend and replaces its text drawing.
///
/// plotters 0.3.7's `ab_glyph` renderer places each glyph's bitmap at the pen
/// position but forgets the glyph's left side bearing, so letters drift
/// ("hum or", "1 000"). This wrapper rasterises the (upright) text itself
/// with the embedded face, keeping plotters' layout box and anchoring, and
/// delegates everything else unchanged. Rotated text goes to the inner
/// backend as before.
pub(super) struct GlyphText<DB>(pub(super) DB);

/// The embedded face, parsed once, for `GlyphText`.
fn glyph_font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_TTF).expect("embedded Noto Sans parses"))
}

impl<DB: DrawingBackend> DrawingBackend for GlyphText<DB> {
    type ErrorType = DB::ErrorType;

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if !matches!(style.transform(), FontTransform::None) {
            return self.0.draw_text(text, style, pos);
        }
        if color.alpha == 0.0 {
            return Ok(());
        }
        // Same box and anchor arithmetic as plotters' default `draw_text`,
        // so text lands where the chart layout expects it.
        let ((min_x, min_y), (max_x, max_y)) =
            style.layout_box(text).map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -(max_x - min_x) / 2,
            HPos::Right => -(max_x - min_x),
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -(max_y - min_y) / 2,
            VPos::Bottom => -(max_y - min_y),
        };
        let origin = (pos.0 + dx - min_x, pos.1 + dy - min_y);

        let size = style.size() as f32;
        let font = glyph_font().as_scaled(size);
        let (w, h) = self.0.get_size();
        let mut result = Ok(());
        let mut pen_x = 0.0f32;
        let mut prev = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                pen_x += font.kern(p, id);
            }
            prev = Some(id);
            // Baseline at size/2 below the box top, as plotters does.
            let glyph = id.with_scale_and_position(size, ab_glyph::point(pen_x, size / 2.0));
            if let Some(outline) = font.outline_glyph(glyph) {
                // `draw` yields pixels relative to the glyph's pixel bounds,
                // whose origin includes the side bearing.
                let b = outline.px_bounds();
                let (bx, by) = (origin.0 + b.min.x as i32, origin.1 + b.min.y as i32);
                outline.draw(|gx, gy, coverage| {
                    let (x, y) = (bx + gx as i32, by + gy as i32);
                    if result.is_ok() && coverage > 0.0 && (0..w as i32).contains(&x) && (0..h as i32).contains(&y) {
                        let px_color =
                            BackendColor { alpha: color.alpha * f64::from(coverage.min(1.0)), rgb: color.rgb };
                        result = self.0.draw_pixel((x, y), px_color);
                    }
                });
            }
            pen_x += font.h_advance(id);
        }
        result
    }

    // ---- plain delegation below ----

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }
    fn draw_pixel(&mut self, p: BackendCoord, c: BackendColor) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(p, c)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(a, b, s)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(a, b, s, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        s: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_path(path, s)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        c: BackendCoord,
        r: u32,
        s: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_circle(c, r, s, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        s: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.fill_polygon(vert, s)
    }
    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        self.0.estimate_text_size(text, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        (w, h): (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, (w, h), src)
    }
}

//! Packed tensors (docs/protocol.md §2.7): fewer bytes on the wire, losslessly.
//!
//! - `u8-grad-zstd`: an F32 tensor whose every value is exactly `k/255`
//!   (what ComfyUI's image loader and any 8-bit source give) travels as its
//!   8-bit values, predicted from their left, upper and upper-left
//!   neighbours (`clamp(left + up - upleft, 0, 255)`, per channel) and
//!   compressed with zstd: about 0.9x the bytes of the same image as PNG,
//!   many times faster. It decodes to bit-identical f32 (`k as f32 / 255`).
//! - `u8-palette-zstd`: an F32 tensor of at most 256 distinct values (an
//!   8-bit image after an invert, a level or a threshold: `1 - k/255` is
//!   not `k/255`) travels as its sorted palette and one 8-bit index per
//!   value, the indices predicted and compressed as above. It decodes to
//!   bit-identical f32.
//! - `shuffle-zstd`: any other tensor, its bytes regrouped by byte position
//!   within an element and compressed with zstd, when a sample says that
//!   pays.
//!
//! A sender packs only for a receiver that announced the codec (`codecs` in
//! `GET /v1/info`, or a request header for results); an older peer gets
//! plain tensors.

use std::fmt;

use crate::error::CodecError;
use crate::value::DType;

/// The codecs this build reads and writes, as announced.
pub const CODECS: &[&str] = &[
    Codec::U8GradZstd.name(),
    Codec::U8PaletteZstd.name(),
    Codec::ShuffleZstd.name(),
];

/// The most values a `u8-palette-zstd` palette holds.
const PALETTE_MAX: usize = 256;

/// zstd level: the fast end, where the ratio on predicted images already
/// beats PNG's deflate.
const ZSTD_LEVEL: i32 = 1;
/// Tensors smaller than this are never packed: the header costs more.
const MIN_PACK_BYTES: usize = 4096;
/// `shuffle-zstd` is used when a sample of this size shrinks to at most
/// `SHUFFLE_PAYS` of its size.
const SAMPLE_BYTES: usize = 256 << 10;
const SHUFFLE_PAYS: f64 = 0.85;

/// How a packed tensor's bytes were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    U8GradZstd,
    U8PaletteZstd,
    ShuffleZstd,
}

impl Codec {
    pub const fn name(self) -> &'static str {
        match self {
            Codec::U8GradZstd => "u8-grad-zstd",
            Codec::U8PaletteZstd => "u8-palette-zstd",
            Codec::ShuffleZstd => "shuffle-zstd",
        }
    }

    pub fn parse(name: &str) -> Option<Codec> {
        [Codec::U8GradZstd, Codec::U8PaletteZstd, Codec::ShuffleZstd]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a sender may use: the codecs the receiver reads, and whether image
/// values may be rounded to 8 bits (lossy, only when asked for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackOptions {
    pub u8_grad_zstd: bool,
    pub u8_palette_zstd: bool,
    pub shuffle_zstd: bool,
    /// IMAGE and MASK entries are rounded to 8 bits with [`quantize`]
    /// (needs `u8_grad_zstd`).
    pub quantize_images: bool,
}

impl PackOptions {
    /// The options for a receiver that announced `names` (unknown names are ignored).
    pub fn for_codecs<'a>(names: impl IntoIterator<Item = &'a str>) -> PackOptions {
        let mut o = PackOptions::default();
        for n in names {
            match Codec::parse(n.trim()) {
                Some(Codec::U8GradZstd) => o.u8_grad_zstd = true,
                Some(Codec::U8PaletteZstd) => o.u8_palette_zstd = true,
                Some(Codec::ShuffleZstd) => o.shuffle_zstd = true,
                None => {}
            }
        }
        o
    }

    /// Everything this build can write, losslessly.
    pub fn all() -> PackOptions {
        PackOptions::for_codecs(CODECS.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        !self.u8_grad_zstd && !self.u8_palette_zstd && !self.shuffle_zstd
    }

    /// A short name of these options ("" for none, e.g. "ups" for every
    /// codec, "q" added for 8-bit images): results packed alike share it.
    pub fn tag(&self) -> String {
        [
            (self.u8_grad_zstd, 'u'),
            (self.u8_palette_zstd, 'p'),
            (self.shuffle_zstd, 's'),
            (self.quantize_images && self.u8_grad_zstd, 'q'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect()
    }
}

/// A float in 0..1 as 8 bits, rounded: what `comfy-remote run` writes into
/// its PNGs and what an 8-bit transfer sends.
pub fn quantize(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The f32 an 8-bit value stands for, computed as ComfyUI's image loader
/// computes it (`np.float32(k) / 255.0`).
pub fn unquantize(k: u8) -> f32 {
    f32::from(k) / 255.0
}

fn f32s(data: &[u8]) -> impl Iterator<Item = f32> + '_ {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// The bits of `k/255` for every `k` (what [`unquantize`] gives).
fn unit_bits() -> [u32; 256] {
    std::array::from_fn(|k| unquantize(k as u8).to_bits())
}

/// The 8-bit values of F32 data when every value is exactly `k/255`
/// (stops at the first one that is not).
pub fn as_u8(data: &[u8]) -> Option<Vec<u8>> {
    let bits = unit_bits();
    let mut out = Vec::with_capacity(data.len() / 4);
    for c in data.chunks_exact(4) {
        let b = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        // The nearest k (saturating; NaN gives 0), then the exact check:
        // any value that is not bit for bit `k/255` fails it.
        let k = (f32::from_bits(b) * 255.0 + 0.5) as i32;
        let k = u8::try_from(k).ok()?;
        if bits[usize::from(k)] != b {
            return None;
        }
        out.push(k);
    }
    Some(out)
}

/// Little-endian F32 bytes of `table[i]` for each index `i` (the caller
/// checked every index is in the table).
fn gather(indices: &[u8], table: &[f32]) -> Vec<u8> {
    let mut entries = [[0u8; 4]; PALETTE_MAX];
    for (e, v) in entries.iter_mut().zip(table) {
        *e = v.to_le_bytes();
    }
    let mut out = vec![0u8; indices.len() * 4];
    for (dst, &i) in out.chunks_exact_mut(4).zip(indices) {
        dst.copy_from_slice(&entries[usize::from(i)]);
    }
    out
}

/// F32 data rounded to 8 bits ([`quantize`]).
pub fn quantized(data: &[u8]) -> Vec<u8> {
    f32s(data).map(quantize).collect()
}

/// The palette of F32 data with at most [`PALETTE_MAX`] distinct values
/// (by bits), sorted by `f32::total_cmp`, and each value's index into it;
/// `None` at the first value past the limit.
pub fn palette(data: &[u8]) -> Option<(Vec<f32>, Vec<u8>)> {
    // Open addressing over the bits; slots hold (bits, provisional index).
    const SLOTS: usize = 1024;
    let mut slots: Vec<Option<(u32, u8)>> = vec![None; SLOTS];
    let mut found: Vec<u32> = Vec::new();
    let mut indices = Vec::with_capacity(data.len() / 4);
    let mut last: Option<(u32, u8)> = None;
    for c in data.chunks_exact(4) {
        let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if let Some((b, i)) = last {
            if b == bits {
                indices.push(i);
                continue;
            }
        }
        let mut slot = (bits.wrapping_mul(0x9E37_79B1) >> 22) as usize % SLOTS;
        let index = loop {
            match slots[slot] {
                Some((b, i)) if b == bits => break i,
                Some(_) => slot = (slot + 1) % SLOTS,
                None => {
                    if found.len() == PALETTE_MAX {
                        return None;
                    }
                    let i = found.len() as u8;
                    found.push(bits);
                    slots[slot] = Some((bits, i));
                    break i;
                }
            }
        };
        last = Some((bits, index));
        indices.push(index);
    }
    // Sorted by value, neighbouring values get neighbouring indices, which
    // is what the predictor needs.
    let mut order: Vec<usize> = (0..found.len()).collect();
    order.sort_by(|&a, &b| f32::from_bits(found[a]).total_cmp(&f32::from_bits(found[b])));
    let mut remap = [0u8; PALETTE_MAX];
    for (sorted, &provisional) in order.iter().enumerate() {
        remap[provisional] = sorted as u8;
    }
    for i in &mut indices {
        *i = remap[usize::from(*i)];
    }
    let values = order.iter().map(|&i| f32::from_bits(found[i])).collect();
    Some((values, indices))
}

/// (planes, rows, columns, channels) of a shape, as the predictor walks it:
/// `[B,H,W,C]` and higher ranks end in rows, columns, channels; `[B,H,W]`
/// is a batch of one-channel planes; `[H,W]` one plane.
fn geometry(shape: &[usize]) -> (usize, usize, usize, usize) {
    match shape {
        [] => (1, 1, 1, 1),
        [n] => (1, 1, *n, 1),
        [h, w] => (1, *h, *w, 1),
        [b, h, w] => (*b, *h, *w, 1),
        [rest @ .., h, w, c] => (rest.iter().product(), *h, *w, *c),
    }
}

/// Rows of `row` values, `rows` to a plane, with `ch` channels: the
/// predictor's walk (§2.7). Each value is predicted as `clamp(left + up -
/// upleft, 0, 255)` (same channel; a neighbour outside the plane is 0).
struct Rows {
    row: usize,
    rows: usize,
    ch: usize,
}

impl Rows {
    fn of(shape: &[usize]) -> Rows {
        let (_, rows, cols, ch) = geometry(shape);
        Rows {
            row: (cols * ch).max(1),
            rows: rows.max(1),
            ch: ch.min((cols * ch).max(1)),
        }
    }

    #[inline]
    fn gradient(left: u8, up: u8, upleft: u8) -> u8 {
        (i16::from(left) + i16::from(up) - i16::from(upleft)).clamp(0, 255) as u8
    }
}

fn grad_filter(values: &[u8], shape: &[usize]) -> Vec<u8> {
    let Rows { row, rows, ch } = Rows::of(shape);
    let mut out = vec![0u8; values.len()];
    for (r, (cur, dst)) in values.chunks(row).zip(out.chunks_mut(row)).enumerate() {
        let n = cur.len();
        if r % rows == 0 {
            dst[..ch.min(n)].copy_from_slice(&cur[..ch.min(n)]);
            for x in ch..n {
                dst[x] = cur[x].wrapping_sub(cur[x - ch]);
            }
        } else {
            let prev = &values[(r - 1) * row..r * row];
            for x in 0..ch.min(n) {
                dst[x] = cur[x].wrapping_sub(prev[x]);
            }
            for x in ch..n {
                dst[x] = cur[x].wrapping_sub(Rows::gradient(cur[x - ch], prev[x], prev[x - ch]));
            }
        }
    }
    out
}

fn grad_unfilter(residuals: &mut [u8], shape: &[usize]) {
    let Rows { row, rows, ch } = Rows::of(shape);
    let count = residuals.len().div_ceil(row);
    for r in 0..count {
        let start = r * row;
        let (before, after) = residuals.split_at_mut(start);
        let n = row.min(after.len());
        let cur = &mut after[..n];
        if r % rows == 0 {
            for x in ch..n {
                cur[x] = cur[x].wrapping_add(cur[x - ch]);
            }
        } else {
            let prev = &before[start - row..];
            for x in 0..ch.min(n) {
                cur[x] = cur[x].wrapping_add(prev[x]);
            }
            for x in ch..n {
                cur[x] = cur[x].wrapping_add(Rows::gradient(cur[x - ch], prev[x], prev[x - ch]));
            }
        }
    }
}

fn shuffle(data: &[u8], size: usize) -> Vec<u8> {
    let n = data.len() / size;
    let mut out = vec![0u8; data.len()];
    for (i, elem) in data.chunks_exact(size).enumerate() {
        for (j, b) in elem.iter().enumerate() {
            out[j * n + i] = *b;
        }
    }
    out
}

fn unshuffle(data: &[u8], size: usize) -> Vec<u8> {
    let n = data.len() / size;
    let mut out = vec![0u8; data.len()];
    for (i, elem) in out.chunks_exact_mut(size).enumerate() {
        for (j, b) in elem.iter_mut().enumerate() {
            *b = data[j * n + i];
        }
    }
    out
}

fn compress(data: &[u8]) -> Result<Vec<u8>, CodecError> {
    zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|e| CodecError::Unsupported {
        what: "a packed tensor".into(),
        hint: format!("zstd failed: {e}"),
    })
}

/// The packed form of one tensor, if it pays: `(codec, bytes)`.
/// `quantize` rounds an F32 image to 8 bits first (lossy).
pub fn pack(
    dtype: DType,
    shape: &[usize],
    data: &[u8],
    opts: &PackOptions,
    quantize: bool,
) -> Result<Option<(Codec, Vec<u8>)>, CodecError> {
    if data.len() < MIN_PACK_BYTES {
        return Ok(None);
    }
    if dtype == DType::F32 && opts.u8_grad_zstd {
        let values = if quantize && opts.quantize_images {
            Some(quantized(data))
        } else {
            as_u8(data)
        };
        if let Some(values) = values {
            let packed = compress(&grad_filter(&values, shape))?;
            return Ok(Some((Codec::U8GradZstd, packed)));
        }
    }
    if dtype == DType::F32 && opts.u8_palette_zstd {
        if let Some((values, indices)) = palette(data) {
            let mut packed = Vec::with_capacity(1 + 4 * values.len() + indices.len() / 4);
            packed.push((values.len() - 1) as u8);
            for v in &values {
                packed.extend_from_slice(&v.to_le_bytes());
            }
            packed.extend_from_slice(&compress(&grad_filter(&indices, shape))?);
            return Ok(Some((Codec::U8PaletteZstd, packed)));
        }
    }
    if opts.shuffle_zstd {
        let size = dtype.size();
        let sample_len = (SAMPLE_BYTES.min(data.len()) / size) * size;
        let sample = compress(&shuffle(&data[..sample_len], size))?;
        if (sample.len() as f64) <= SHUFFLE_PAYS * sample_len as f64 {
            let packed = compress(&shuffle(data, size))?;
            if packed.len() < data.len() {
                return Ok(Some((Codec::ShuffleZstd, packed)));
            }
        }
    }
    Ok(None)
}

/// The plain bytes of a packed tensor of `dtype` and `shape` (checked to
/// be at most `max_bytes` before anything is allocated; the data must
/// unpack to exactly that size).
pub fn unpack(
    codec: Codec,
    dtype: DType,
    shape: &[usize],
    packed: &[u8],
    max_bytes: u64,
) -> Result<Vec<u8>, CodecError> {
    let bad = |reason: String| CodecError::InvalidNode {
        path: format!("a `{codec}` tensor"),
        reason,
    };
    let numel = crate::value::Tensor::numel(shape).ok_or_else(|| CodecError::ShapeOverflow {
        shape: shape.to_vec(),
    })?;
    let plain = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| CodecError::ShapeOverflow {
            shape: shape.to_vec(),
        })?;
    if plain as u64 > max_bytes {
        return Err(CodecError::TooLarge {
            size: plain as u64,
            limit: max_bytes,
        });
    }
    let inflate = |frame: &[u8], len: usize| -> Result<Vec<u8>, CodecError> {
        let out = zstd::bulk::decompress(frame, len)
            .map_err(|e| bad(format!("the data is not a zstd frame of {len} bytes ({e})")))?;
        if out.len() != len {
            return Err(bad(format!(
                "the data unpacks to {} bytes, the shape needs {len}",
                out.len()
            )));
        }
        Ok(out)
    };
    match codec {
        Codec::U8GradZstd => {
            if dtype != DType::F32 {
                return Err(bad(format!("its dtype must be F32, not {dtype}")));
            }
            let mut values = inflate(packed, numel)?;
            grad_unfilter(&mut values, shape);
            let table = unit_bits().map(f32::from_bits);
            Ok(gather(&values, &table))
        }
        Codec::U8PaletteZstd => {
            if dtype != DType::F32 {
                return Err(bad(format!("its dtype must be F32, not {dtype}")));
            }
            let (&count, rest) = packed
                .split_first()
                .ok_or_else(|| bad("the data is empty".into()))?;
            let count = usize::from(count) + 1;
            if rest.len() < 4 * count {
                return Err(bad(format!(
                    "the data is shorter than its palette of {count} values"
                )));
            }
            let (table, frame) = rest.split_at(4 * count);
            let values: Vec<f32> = f32s(table).collect();
            if values.windows(2).any(|w| w[0].total_cmp(&w[1]).is_ge()) {
                return Err(bad(
                    "its palette is not strictly increasing (f32 total order)".into(),
                ));
            }
            let mut indices = inflate(frame, numel)?;
            grad_unfilter(&mut indices, shape);
            if let Some(&i) = indices.iter().max().filter(|&&i| usize::from(i) >= count) {
                return Err(bad(format!(
                    "index {i} is past its palette of {count} values"
                )));
            }
            Ok(gather(&indices, &values))
        }
        Codec::ShuffleZstd => Ok(unshuffle(&inflate(packed, plain)?, dtype.size())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(h: usize, w: usize, c: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for k in 0..c {
                    let v = ((x * 7 + y * 3 + k * 50) % 256) as u8;
                    out.extend_from_slice(&unquantize(v).to_le_bytes());
                }
            }
        }
        out
    }

    /// The predictor as §2.7 words it, value by value.
    fn reference_filter(values: &[u8], shape: &[usize]) -> Vec<u8> {
        let (_, rows, cols, ch) = geometry(shape);
        let row = cols * ch;
        let plane = rows * row;
        let at = |p: usize, y: usize, x: usize| i32::from(values[p * plane + y * row + x]);
        let mut out = Vec::new();
        for p in 0..values.len() / plane {
            for y in 0..rows {
                for x in 0..row {
                    let left = if x >= ch { at(p, y, x - ch) } else { 0 };
                    let up = if y > 0 { at(p, y - 1, x) } else { 0 };
                    let upleft = if y > 0 && x >= ch {
                        at(p, y - 1, x - ch)
                    } else {
                        0
                    };
                    let pred = (left + up - upleft).clamp(0, 255) as u8;
                    out.push((at(p, y, x) as u8).wrapping_sub(pred));
                }
            }
        }
        out
    }

    #[test]
    fn the_predictor_is_the_one_the_protocol_describes() {
        let mut x = 0x9E37_79B9u32;
        for shape in [
            vec![2, 5, 7, 3],
            vec![3, 4, 6],
            vec![9, 11],
            vec![17],
            vec![1, 1, 1, 4],
        ] {
            let n: usize = shape.iter().product();
            let values: Vec<u8> = (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    ((i * 3) as u8).wrapping_add((x % 9) as u8)
                })
                .collect();
            let filtered = grad_filter(&values, &shape);
            assert_eq!(filtered, reference_filter(&values, &shape), "{shape:?}");
            let mut back = filtered;
            grad_unfilter(&mut back, &shape);
            assert_eq!(back, values, "{shape:?}");
        }
    }

    #[test]
    fn every_8_bit_value_survives_bit_for_bit() {
        let all: Vec<u8> = (0..=255u8)
            .flat_map(|k| unquantize(k).to_le_bytes())
            .collect();
        let back = as_u8(&all).expect("all are k/255");
        assert_eq!(back, (0..=255u8).collect::<Vec<_>>());
        for k in 0..=255u8 {
            assert_eq!(quantize(unquantize(k)), k);
        }
        // One value off by one ulp is not 8-bit data.
        let mut off = all.clone();
        let v = f32::from_le_bytes([off[40], off[41], off[42], off[43]]);
        off[40..44].copy_from_slice(&f32::from_bits(v.to_bits() + 1).to_le_bytes());
        assert!(as_u8(&off).is_none());
        assert!(as_u8(&(-0.0f32).to_le_bytes()).is_none());
    }

    #[test]
    fn images_pack_and_unpack_to_the_same_bits() {
        for shape in [
            vec![2, 16, 24, 3],
            vec![1, 33, 17, 4],
            vec![3, 40, 41],
            vec![64, 65],
        ] {
            let (b, h, w, c) = geometry(&shape);
            let data = image(b * h, w, c);
            let (codec, packed) = pack(DType::F32, &shape, &data, &PackOptions::all(), false)
                .expect("pack")
                .expect("8-bit data packs");
            assert_eq!(codec, Codec::U8GradZstd);
            assert!(
                packed.len() * 4 < data.len(),
                "{shape:?}: {} bytes",
                packed.len()
            );
            let back = unpack(codec, DType::F32, &shape, &packed, u64::MAX).expect("unpack");
            assert_eq!(back, data, "{shape:?}");
        }
    }

    #[test]
    fn other_tensors_pack_only_when_it_pays() {
        // Smooth floats: their high bytes repeat, so shuffling pays.
        let smooth: Vec<u8> = (0..10_000)
            .flat_map(|i| (i as f32 * 0.001).to_le_bytes())
            .collect();
        let (codec, packed) = pack(DType::F32, &[10_000], &smooth, &PackOptions::all(), false)
            .expect("pack")
            .expect("pays");
        assert_eq!(codec, Codec::ShuffleZstd);
        assert_eq!(
            unpack(codec, DType::F32, &[10_000], &packed, u64::MAX).expect("unpack"),
            smooth
        );
        // Noise does not shrink: it stays plain.
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..40_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(
            pack(DType::U8, &[40_000], &noise, &PackOptions::all(), false)
                .expect("pack")
                .is_none()
        );
        // Nothing is packed for a receiver that announced no codec.
        assert!(pack(
            DType::F32,
            &[10_000],
            &smooth,
            &PackOptions::default(),
            false
        )
        .expect("pack")
        .is_none());
    }

    #[test]
    fn quantizing_is_lossy_and_only_when_asked() {
        let inverted: Vec<u8> = (0..=255u8)
            .cycle()
            .take(4096)
            .flat_map(|k| (1.0 - unquantize(k)).to_le_bytes())
            .collect();
        let shape = [1, 64, 64, 1];
        let lossless = pack(DType::F32, &shape, &inverted, &PackOptions::all(), true)
            .expect("pack")
            .map(|(c, _)| c);
        assert_ne!(lossless, Some(Codec::U8GradZstd), "1 - k/255 is not k/255");
        let opts = PackOptions {
            quantize_images: true,
            ..PackOptions::all()
        };
        let (codec, packed) = pack(DType::F32, &shape, &inverted, &opts, true)
            .expect("pack")
            .expect("quantized");
        assert_eq!(codec, Codec::U8GradZstd);
        let back = unpack(codec, DType::F32, &shape, &packed, u64::MAX).expect("unpack");
        assert_eq!(quantized(&back), quantized(&inverted));
    }

    #[test]
    fn few_distinct_values_pack_as_a_palette_bit_for_bit() {
        // An inverted 8-bit image: 1 - k/255, not k/255, 256 values at most.
        let shape = [1, 48, 64, 3];
        let inverted: Vec<u8> = f32s(&image(48, 64, 3))
            .flat_map(|v| (1.0 - v).to_le_bytes())
            .collect();
        assert!(as_u8(&inverted).is_none());
        let (codec, packed) = pack(DType::F32, &shape, &inverted, &PackOptions::all(), false)
            .expect("pack")
            .expect("packs");
        assert_eq!(codec, Codec::U8PaletteZstd);
        assert!(packed.len() * 8 < inverted.len(), "{} bytes", packed.len());
        let back = unpack(codec, DType::F32, &shape, &packed, u64::MAX).expect("unpack");
        assert_eq!(back, inverted);
        // Signed zeros, NaN and infinities are values like any other.
        let odd: Vec<u8> = [0.0f32, -0.0, f32::NAN, f32::INFINITY, -1.5]
            .iter()
            .cycle()
            .take(5000)
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let (codec, packed) = pack(DType::F32, &[5000], &odd, &PackOptions::all(), false)
            .expect("pack")
            .expect("packs");
        assert_eq!(codec, Codec::U8PaletteZstd);
        assert_eq!(
            unpack(codec, DType::F32, &[5000], &packed, u64::MAX).expect("unpack"),
            odd
        );
        // 257 distinct values are not a palette.
        let many: Vec<u8> = (0..5000u32)
            .flat_map(|i| ((i % 257) as f32 * 0.5).to_le_bytes())
            .collect();
        assert!(palette(&many).is_none());
        // A palette out of order, or of another length than the data, is refused.
        let mut shuffled = packed.clone();
        shuffled[1..5].copy_from_slice(&7.0f32.to_le_bytes());
        let e = unpack(codec, DType::F32, &[5000], &shuffled, u64::MAX).expect_err("order");
        assert!(e.to_string().contains("strictly increasing"), "{e}");
        let mut short = packed.clone();
        short[0] = 1;
        let e = unpack(codec, DType::F32, &[5000], &short, u64::MAX).expect_err("index");
        assert_eq!(e.kind(), "invalid_node", "{e}");
        let e = unpack(codec, DType::F32, &[5000], &[], u64::MAX).expect_err("empty");
        assert_eq!(e.kind(), "invalid_node", "{e}");
    }

    #[test]
    fn bombs_and_lies_are_refused_before_allocating() {
        let data = image(64, 64, 3);
        let shape = [1, 64, 64, 3];
        let (codec, packed) = pack(DType::F32, &shape, &data, &PackOptions::all(), false)
            .expect("pack")
            .expect("packs");
        let e = unpack(codec, DType::F32, &[1 << 20, 1 << 20], &packed, 1 << 30).expect_err("big");
        assert_eq!(e.kind(), "too_large");
        let e = unpack(codec, DType::F32, &[1, 64, 64, 4], &packed, u64::MAX).expect_err("lie");
        assert_eq!(e.kind(), "invalid_node", "{e}");
        let e = unpack(codec, DType::F16, &shape, &packed, u64::MAX).expect_err("dtype");
        assert!(e.to_string().contains("must be F32"), "{e}");
        let e = unpack(codec, DType::F32, &shape, b"not zstd", u64::MAX).expect_err("junk");
        assert_eq!(e.kind(), "invalid_node");
    }
}

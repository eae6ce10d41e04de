//! RISC-V F and D arithmetic in software: every operation takes the rounding
//! mode explicitly and returns the IEEE exception flags in fflags order, so
//! results and `fflags` match hardware bit for bit. Arithmetic goes through
//! `rustc_apfloat` (LLVM's APFloat); RISC-V specifics (canonical NaNs,
//! NaN-boxing, min/max and conversion edge cases) are handled here.

use rustc_apfloat::ieee::{Double, Single};
use rustc_apfloat::{Float, FloatConvert, Round, Status, StatusAnd};

use crate::decode::{FBinOp, FCmpOp, FmaOp, Fp, IntTy};

/// fflags bits.
pub const NX: u8 = 1;
pub const UF: u8 = 2;
pub const OF: u8 = 4;
pub const DZ: u8 = 8;
pub const NV: u8 = 16;

pub const CANON_NAN_S: u64 = 0x7fc0_0000;
pub const CANON_NAN_D: u64 = 0x7ff8_0000_0000_0000;
const BOX: u64 = 0xffff_ffff_0000_0000;

fn flags(status: Status) -> u8 {
    let mut out = 0;
    if status.contains(Status::INEXACT) {
        out |= NX;
    }
    if status.contains(Status::UNDERFLOW) {
        out |= UF;
    }
    if status.contains(Status::OVERFLOW) {
        out |= OF;
    }
    if status.contains(Status::DIV_BY_ZERO) {
        out |= DZ;
    }
    if status.contains(Status::INVALID_OP) {
        out |= NV;
    }
    out
}

/// Maps a resolved (non-dynamic, valid) rm field to APFloat's rounding.
pub fn round_of(rm: u8) -> Option<Round> {
    Some(match rm {
        0 => Round::NearestTiesToEven,
        1 => Round::TowardZero,
        2 => Round::TowardNegative,
        3 => Round::TowardPositive,
        4 => Round::NearestTiesToAway,
        _ => return None,
    })
}

/// Reads a single from a 64-bit register: not NaN-boxed means canonical NaN.
pub fn unbox_s(reg: u64) -> u32 {
    if reg & BOX == BOX {
        reg as u32
    } else {
        CANON_NAN_S as u32
    }
}

pub fn box_s(bits: u32) -> u64 {
    BOX | u64::from(bits)
}

/// A value in one of the two formats, with the operations both share.
trait RvFloat: Float + Copy {
    const CANON: u64;
    fn from_reg(reg: u64) -> Self;
    fn to_reg(self) -> u64;
}

impl RvFloat for Single {
    const CANON: u64 = CANON_NAN_S;
    fn from_reg(reg: u64) -> Self {
        Single::from_bits(u128::from(unbox_s(reg)))
    }
    fn to_reg(self) -> u64 {
        if self.is_nan() {
            box_s(CANON_NAN_S as u32)
        } else {
            box_s(self.to_bits() as u32)
        }
    }
}

impl RvFloat for Double {
    const CANON: u64 = CANON_NAN_D;
    fn from_reg(reg: u64) -> Self {
        Double::from_bits(u128::from(reg))
    }
    fn to_reg(self) -> u64 {
        if self.is_nan() {
            CANON_NAN_D
        } else {
            self.to_bits() as u64
        }
    }
}

/// Result register value and the flags raised.
pub type FpResult = (u64, u8);

fn canon_reg<F: RvFloat>() -> u64 {
    if F::CANON == CANON_NAN_S {
        box_s(CANON_NAN_S as u32)
    } else {
        CANON_NAN_D
    }
}

/// APFloat reports an overflow that rounds to the largest finite number (a
/// directed mode) as merely inexact. IEEE (and RISC-V) call it overflow when
/// the exact result's magnitude reaches 2^(emax+1); `halved` recomputes the
/// operation on operands scaled so the exact result halves, in RTZ, which
/// tells exactly that.
fn overflow_fix<F: RvFloat>(
    r: StatusAnd<F>,
    halved: impl FnOnce() -> StatusAnd<F>,
) -> StatusAnd<F> {
    if r.status == Status::INEXACT && r.value.abs().is_largest() {
        let h = halved().value;
        if h.scalbn(1).is_infinite() {
            return (Status::OVERFLOW | Status::INEXACT).and(r.value);
        }
    }
    r
}

fn half<F: RvFloat>(x: F) -> F {
    x.scalbn(-1)
}

fn bin_t<F: RvFloat>(op: FBinOp, a: u64, b: u64, round: Round) -> FpResult {
    let (x, y) = (F::from_reg(a), F::from_reg(b));
    let snan = x.is_signaling() || y.is_signaling();
    let sig = if snan { NV } else { 0 };
    let done = |r: StatusAnd<F>| (r.value.to_reg(), flags(r.status));
    let rtz = Round::TowardZero;
    match op {
        FBinOp::Add => done(overflow_fix(x.add_r(y, round), || {
            half(x).add_r(half(y), rtz)
        })),
        FBinOp::Sub => done(overflow_fix(x.sub_r(y, round), || {
            half(x).sub_r(half(y), rtz)
        })),
        FBinOp::Mul => done(overflow_fix(x.mul_r(y, round), || half(x).mul_r(y, rtz))),
        FBinOp::Div => done(overflow_fix(x.div_r(y, round), || half(x).div_r(y, rtz))),
        FBinOp::Min | FBinOp::Max => {
            let r = if x.is_nan() && y.is_nan() {
                canon_reg::<F>()
            } else if x.is_nan() {
                y.to_reg()
            } else if y.is_nan() {
                x.to_reg()
            } else if x.is_zero() && y.is_zero() {
                // -0 < +0 for min/max.
                let pick_x = (op == FBinOp::Min) == x.is_negative();
                if pick_x {
                    x.to_reg()
                } else {
                    y.to_reg()
                }
            } else {
                let x_less = x < y;
                if (op == FBinOp::Min) == x_less {
                    x.to_reg()
                } else {
                    y.to_reg()
                }
            };
            (r, sig)
        }
        FBinOp::SgnJ | FBinOp::SgnJN | FBinOp::SgnJX => unreachable!("handled on raw bits"),
    }
}

/// Binary arithmetic and min/max; sign injection works on raw bits.
pub fn bin(fp: Fp, op: FBinOp, a: u64, b: u64, round: Round) -> FpResult {
    if matches!(op, FBinOp::SgnJ | FBinOp::SgnJN | FBinOp::SgnJX) {
        return (sgnj(fp, op, a, b), 0);
    }
    match fp {
        Fp::S => bin_t::<Single>(op, a, b, round),
        Fp::D => bin_t::<Double>(op, a, b, round),
    }
}

fn sgnj(fp: Fp, op: FBinOp, a: u64, b: u64) -> u64 {
    let (a, b, sign, width_mask) = match fp {
        Fp::S => (
            u64::from(unbox_s(a)),
            u64::from(unbox_s(b)),
            1u64 << 31,
            0xffff_ffffu64,
        ),
        Fp::D => (a, b, 1u64 << 63, u64::MAX),
    };
    let s = match op {
        FBinOp::SgnJ => b & sign,
        FBinOp::SgnJN => !b & sign,
        _ => (a ^ b) & sign,
    };
    let r = ((a & !sign) | s) & width_mask;
    match fp {
        Fp::S => box_s(r as u32),
        Fp::D => r,
    }
}

fn fma_t<F: RvFloat>(op: FmaOp, a: u64, b: u64, c: u64, round: Round) -> FpResult {
    let (mut x, y, mut z) = (F::from_reg(a), F::from_reg(b), F::from_reg(c));
    // inf * 0 is invalid even when the addend is a quiet NaN.
    let inf_zero = (x.is_infinite() && y.is_zero()) || (x.is_zero() && y.is_infinite());
    if matches!(op, FmaOp::Nmsub | FmaOp::Nmadd) {
        x = -x;
    }
    if matches!(op, FmaOp::Msub | FmaOp::Nmadd) {
        z = -z;
    }
    if inf_zero {
        return (canon_reg::<F>(), NV);
    }
    let r = x.mul_add_r(y, z, round);
    let r = overflow_fix(r, || half(x).mul_add_r(y, half(z), Round::TowardZero));
    (r.value.to_reg(), flags(r.status))
}

pub fn fma(fp: Fp, op: FmaOp, a: u64, b: u64, c: u64, round: Round) -> FpResult {
    match fp {
        Fp::S => fma_t::<Single>(op, a, b, c, round),
        Fp::D => fma_t::<Double>(op, a, b, c, round),
    }
}

/// Square root, correctly rounded in every mode: the host's sqrt is correct
/// for round-to-nearest; the exact residual r*r - x (computed exactly with an
/// FMA for doubles, in f64 for singles) tells which way to step for the
/// directed modes. Sqrt results are never exactly halfway, so RMM == RNE.
pub fn sqrt(fp: Fp, a: u64, round: Round) -> FpResult {
    match fp {
        Fp::D => {
            let x = f64::from_bits(a);
            if let Some(special) =
                sqrt_special(x.is_nan(), is_snan_d(a), x == 0.0, x < 0.0, x.is_infinite())
            {
                return match special {
                    Special::Nan(fl) => (CANON_NAN_D, fl),
                    Special::Same => (a, 0),
                };
            }
            let mut r = x.sqrt();
            let residual = r.mul_add(r, -x); // exact sign of r^2 - x
            if residual == 0.0 {
                return (r.to_bits(), 0);
            }
            match round {
                Round::TowardZero | Round::TowardNegative if residual > 0.0 => r = next_down_f64(r),
                Round::TowardPositive if residual < 0.0 => r = next_up_f64(r),
                _ => {}
            }
            (r.to_bits(), NX)
        }
        Fp::S => {
            let bits = unbox_s(a);
            let x = f32::from_bits(bits);
            let snan = x.is_nan() && bits & 0x0040_0000 == 0;
            if let Some(special) =
                sqrt_special(x.is_nan(), snan, x == 0.0, x < 0.0, x.is_infinite())
            {
                return match special {
                    Special::Nan(fl) => (box_s(CANON_NAN_S as u32), fl),
                    Special::Same => (box_s(bits), 0),
                };
            }
            // f64 sqrt then one rounding to f32 is correct for RNE (53 >= 2*24+2).
            let mut r = (f64::from(x)).sqrt() as f32;
            // r has 24 significant bits, r*r fits in f64 exactly; so does x.
            let residual = f64::from(r) * f64::from(r) - f64::from(x);
            if residual == 0.0 {
                return (box_s(r.to_bits()), 0);
            }
            match round {
                Round::TowardZero | Round::TowardNegative if residual > 0.0 => {
                    r = f32::from_bits(r.to_bits() - 1)
                }
                Round::TowardPositive if residual < 0.0 => r = f32::from_bits(r.to_bits() + 1),
                _ => {}
            }
            (box_s(r.to_bits()), NX)
        }
    }
}

enum Special {
    Nan(u8),
    Same,
}

fn sqrt_special(nan: bool, snan: bool, zero: bool, negative: bool, inf: bool) -> Option<Special> {
    if nan {
        return Some(Special::Nan(if snan { NV } else { 0 }));
    }
    if zero {
        return Some(Special::Same); // sqrt(-0) = -0
    }
    if negative {
        return Some(Special::Nan(NV));
    }
    if inf {
        return Some(Special::Same);
    }
    None
}

fn is_snan_d(bits: u64) -> bool {
    f64::from_bits(bits).is_nan() && bits & (1 << 51) == 0
}

// Positive finite non-zero inputs only (sqrt results).
fn next_down_f64(r: f64) -> f64 {
    f64::from_bits(r.to_bits() - 1)
}
fn next_up_f64(r: f64) -> f64 {
    f64::from_bits(r.to_bits() + 1)
}

fn cmp_t<F: RvFloat>(op: FCmpOp, a: u64, b: u64) -> (u64, u8) {
    let (x, y) = (F::from_reg(a), F::from_reg(b));
    if x.is_nan() || y.is_nan() {
        // feq is quiet (only sNaN signals); flt/fle signal on any NaN.
        let nv = op != FCmpOp::Eq || x.is_signaling() || y.is_signaling();
        return (0, if nv { NV } else { 0 });
    }
    let r = match op {
        FCmpOp::Eq => x == y,
        FCmpOp::Lt => x < y,
        FCmpOp::Le => x <= y,
    };
    (u64::from(r), 0)
}

pub fn cmp(fp: Fp, op: FCmpOp, a: u64, b: u64) -> (u64, u8) {
    match fp {
        Fp::S => cmp_t::<Single>(op, a, b),
        Fp::D => cmp_t::<Double>(op, a, b),
    }
}

fn class_t<F: RvFloat>(a: u64) -> u64 {
    let x = F::from_reg(a);
    let neg = x.is_negative();
    let bit = if x.is_nan() {
        if x.is_signaling() {
            8
        } else {
            9
        }
    } else if x.is_infinite() {
        if neg {
            0
        } else {
            7
        }
    } else if x.is_zero() {
        if neg {
            3
        } else {
            4
        }
    } else if x.is_denormal() {
        if neg {
            2
        } else {
            5
        }
    } else if neg {
        1
    } else {
        6
    };
    1 << bit
}

pub fn class(fp: Fp, a: u64) -> u64 {
    match fp {
        Fp::S => class_t::<Single>(a),
        Fp::D => class_t::<Double>(a),
    }
}

fn to_int_t<F: RvFloat>(ty: IntTy, a: u64, round: Round) -> FpResult {
    let x = F::from_reg(a);
    let (width, signed) = match ty {
        IntTy::W => (32usize, true),
        IntTy::Wu => (32, false),
        IntTy::L => (64, true),
        IntTy::Lu => (64, false),
    };
    let max_s = (1i128 << (width - 1)) - 1;
    let min_s = -(1i128 << (width - 1));
    let max_u = (1i128 << width) - 1;
    let value: i128;
    let mut fl = 0;
    if x.is_nan() {
        value = if signed { max_s } else { max_u };
        fl = NV;
    } else {
        // Round to an integer in the requested mode first, then range-check.
        let r = x.round_to_integral(round);
        let inexact = r.status.contains(Status::INEXACT);
        let rv = r.value;
        let mut exact = true;
        let wide = rv.to_i128_r(100, Round::TowardZero, &mut exact).value;
        let (lo, hi) = if signed { (min_s, max_s) } else { (0, max_u) };
        if rv.is_infinite() || wide < lo || wide > hi {
            value = if rv.is_negative() { lo } else { hi };
            fl = NV;
        } else {
            value = wide;
            if inexact {
                fl = NX;
            }
        }
    }
    // 32-bit results are sign-extended to 64 bits, even the unsigned ones.
    let out = if width == 32 {
        i64::from(value as i32) as u64
    } else {
        value as u64
    };
    (out, fl)
}

pub fn to_int(fp: Fp, ty: IntTy, a: u64, round: Round) -> FpResult {
    match fp {
        Fp::S => to_int_t::<Single>(ty, a, round),
        Fp::D => to_int_t::<Double>(ty, a, round),
    }
}

fn from_int_t<F: RvFloat>(ty: IntTy, v: u64, round: Round) -> FpResult {
    let r: StatusAnd<F> = match ty {
        IntTy::W => F::from_i128_r(i128::from(v as i32), round),
        IntTy::Wu => F::from_u128_r(u128::from(v as u32), round),
        IntTy::L => F::from_i128_r(i128::from(v as i64), round),
        IntTy::Lu => F::from_u128_r(u128::from(v), round),
    };
    (r.value.to_reg(), flags(r.status))
}

pub fn from_int(fp: Fp, ty: IntTy, v: u64, round: Round) -> FpResult {
    match fp {
        Fp::S => from_int_t::<Single>(ty, v, round),
        Fp::D => from_int_t::<Double>(ty, v, round),
    }
}

/// fcvt.s.d (`to` = S) and fcvt.d.s (`to` = D).
pub fn convert(to: Fp, a: u64, round: Round) -> FpResult {
    let mut loses = false;
    match to {
        Fp::S => {
            let x = Double::from_reg(a);
            let r: StatusAnd<Single> = x.convert_r(round, &mut loses);
            let r = overflow_fix(r, || half(x).convert_r(Round::TowardZero, &mut false));
            let nv = if x.is_signaling() { NV } else { 0 };
            (r.value.to_reg(), flags(r.status) | nv)
        }
        Fp::D => {
            let x = Single::from_reg(a);
            let r: StatusAnd<Double> = x.convert_r(round, &mut loses);
            let nv = if x.is_signaling() { NV } else { 0 };
            (r.value.to_reg(), flags(r.status) | nv)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RNE: Round = Round::NearestTiesToEven;

    fn d(x: f64) -> u64 {
        x.to_bits()
    }

    #[test]
    fn add_and_flags() {
        assert_eq!(bin(Fp::D, FBinOp::Add, d(1.0), d(2.0), RNE), (d(3.0), 0));
        let (r, fl) = bin(Fp::D, FBinOp::Add, d(1.0), d(1e-30), RNE);
        assert_eq!((r, fl), (d(1.0), NX));
        let (_, fl) = bin(Fp::D, FBinOp::Div, d(1.0), d(0.0), RNE);
        assert_eq!(fl, DZ);
        let (r, fl) = bin(Fp::D, FBinOp::Sub, d(f64::INFINITY), d(f64::INFINITY), RNE);
        assert_eq!((r, fl), (CANON_NAN_D, NV));
    }

    #[test]
    fn rounding_modes_on_division() {
        let one = d(1.0);
        let three = d(3.0);
        let rtz = bin(Fp::D, FBinOp::Div, one, three, Round::TowardZero).0;
        let rup = bin(Fp::D, FBinOp::Div, one, three, Round::TowardPositive).0;
        assert_eq!(rup, rtz + 1);
    }

    #[test]
    fn single_nan_boxing() {
        // An unboxed single reads as the canonical NaN.
        assert_eq!(class(Fp::S, 0x3f80_0000), 1 << 9);
        assert_eq!(class(Fp::S, box_s(0x3f80_0000)), 1 << 6);
    }

    #[test]
    fn conversions_saturate() {
        assert_eq!(to_int(Fp::D, IntTy::W, d(1e10), RNE), (0x7fff_ffff, NV));
        assert_eq!(to_int(Fp::D, IntTy::Wu, d(-1.0), RNE), (0, NV));
        assert_eq!(to_int(Fp::D, IntTy::Wu, d(-0.25), RNE), (0, NX));
        assert_eq!(
            to_int(Fp::D, IntTy::L, d(f64::NAN), RNE),
            (i64::MAX as u64, NV)
        );
        assert_eq!(
            to_int(Fp::D, IntTy::Wu, d(4e9), RNE),
            (4_000_000_000u32 as i32 as i64 as u64, 0)
        );
        assert_eq!(to_int(Fp::D, IntTy::L, d(-2.5), RNE), ((-2i64) as u64, NX));
        assert_eq!(
            to_int(Fp::D, IntTy::L, d(-2.5), Round::NearestTiesToAway),
            ((-3i64) as u64, NX)
        );
    }

    #[test]
    fn sqrt_directed() {
        let two = d(2.0);
        let rne = sqrt(Fp::D, two, RNE);
        let rdn = sqrt(Fp::D, two, Round::TowardNegative);
        let rup = sqrt(Fp::D, two, Round::TowardPositive);
        assert_eq!(rne.1, NX);
        assert_eq!(rup.0 - rdn.0, 1);
        assert_eq!(sqrt(Fp::D, d(4.0), Round::TowardZero), (d(2.0), 0));
        assert_eq!(sqrt(Fp::D, d(-1.0), RNE), (CANON_NAN_D, NV));
    }
}

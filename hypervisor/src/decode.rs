//! RV64GC instruction decoding: one function, [`decode`], turns 16- or 32-bit
//! instruction words into the typed [`Inst`]. Compressed (C) instructions are
//! expanded to their 32-bit equivalents, so the executor and any translator
//! only ever see one form; the returned length tells them how far pc moves.

/// Integer register index (0..=31); x0 reads as zero.
pub type Reg = u8;

/// Register-register / register-immediate ALU operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
}

/// M extension operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MulOp {
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchOp {
    Eq,
    Ne,
    Lt,
    Ge,
    Ltu,
    Geu,
}

/// Width and signedness of an integer load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOp {
    B,
    H,
    W,
    D,
    Bu,
    Hu,
    Wu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    B,
    H,
    W,
    D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrOp {
    Rw,
    Rs,
    Rc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmoOp {
    Swap,
    Add,
    Xor,
    And,
    Or,
    Min,
    Max,
    Minu,
    Maxu,
}

/// Floating-point precision of an F/D instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp {
    S,
    D,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FmaOp {
    Madd,
    Msub,
    Nmsub,
    Nmadd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FBinOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    SgnJ,
    SgnJN,
    SgnJX,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FCmpOp {
    Eq,
    Lt,
    Le,
}

/// Integer type of an fcvt between integer and float registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntTy {
    W,
    Wu,
    L,
    Lu,
}

/// One decoded instruction. Immediates are already sign-extended and scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inst {
    Lui {
        rd: Reg,
        imm: i64,
    },
    Auipc {
        rd: Reg,
        imm: i64,
    },
    Jal {
        rd: Reg,
        off: i64,
    },
    Jalr {
        rd: Reg,
        rs1: Reg,
        off: i64,
    },
    Branch {
        op: BranchOp,
        rs1: Reg,
        rs2: Reg,
        off: i64,
    },
    Load {
        op: LoadOp,
        rd: Reg,
        rs1: Reg,
        off: i64,
    },
    Store {
        op: StoreOp,
        rs1: Reg,
        rs2: Reg,
        off: i64,
    },
    /// `word` selects the *W forms (32-bit result, sign-extended).
    OpImm {
        op: AluOp,
        word: bool,
        rd: Reg,
        rs1: Reg,
        imm: i64,
    },
    Op {
        op: AluOp,
        word: bool,
        rd: Reg,
        rs1: Reg,
        rs2: Reg,
    },
    MulDiv {
        op: MulOp,
        word: bool,
        rd: Reg,
        rs1: Reg,
        rs2: Reg,
    },
    Fence,
    FenceI,
    Ecall,
    Ebreak,
    Mret,
    Sret,
    Wfi,
    SfenceVma {
        rs1: Reg,
        rs2: Reg,
    },
    /// `imm` selects the CSRR*I forms, where `src` is a 5-bit immediate.
    Csr {
        op: CsrOp,
        imm: bool,
        rd: Reg,
        src: u8,
        csr: u16,
    },
    Lr {
        double: bool,
        rd: Reg,
        rs1: Reg,
    },
    Sc {
        double: bool,
        rd: Reg,
        rs1: Reg,
        rs2: Reg,
    },
    Amo {
        op: AmoOp,
        double: bool,
        rd: Reg,
        rs1: Reg,
        rs2: Reg,
    },
    FLoad {
        fp: Fp,
        rd: Reg,
        rs1: Reg,
        off: i64,
    },
    FStore {
        fp: Fp,
        rs1: Reg,
        rs2: Reg,
        off: i64,
    },
    FMa {
        op: FmaOp,
        fp: Fp,
        rd: Reg,
        rs1: Reg,
        rs2: Reg,
        rs3: Reg,
        rm: u8,
    },
    FBin {
        op: FBinOp,
        fp: Fp,
        rd: Reg,
        rs1: Reg,
        rs2: Reg,
        rm: u8,
    },
    FSqrt {
        fp: Fp,
        rd: Reg,
        rs1: Reg,
        rm: u8,
    },
    FCmp {
        op: FCmpOp,
        fp: Fp,
        rd: Reg,
        rs1: Reg,
        rs2: Reg,
    },
    FClass {
        fp: Fp,
        rd: Reg,
        rs1: Reg,
    },
    /// fcvt.{w,wu,l,lu}.{s,d}: float register to integer register.
    FCvtToInt {
        fp: Fp,
        ty: IntTy,
        rd: Reg,
        rs1: Reg,
        rm: u8,
    },
    /// fcvt.{s,d}.{w,wu,l,lu}: integer register to float register.
    FCvtFromInt {
        fp: Fp,
        ty: IntTy,
        rd: Reg,
        rs1: Reg,
        rm: u8,
    },
    /// fcvt.s.d (`to` = S) or fcvt.d.s (`to` = D).
    FCvtFp {
        to: Fp,
        rd: Reg,
        rs1: Reg,
        rm: u8,
    },
    /// fmv.x.w / fmv.x.d
    FMvToInt {
        fp: Fp,
        rd: Reg,
        rs1: Reg,
    },
    /// fmv.w.x / fmv.d.x
    FMvFromInt {
        fp: Fp,
        rd: Reg,
        rs1: Reg,
    },
    /// Not a valid RV64GC instruction; executing it raises illegal-instruction
    /// with the raw bits as mtval.
    Illegal,
}

fn bits(x: u32, hi: u32, lo: u32) -> u32 {
    (x >> lo) & ((1u32 << (hi - lo + 1)) - 1)
}

fn sext(value: u64, width: u32) -> i64 {
    let shift = 64 - width;
    ((value << shift) as i64) >> shift
}

/// Decodes the instruction whose first 16 bits are the low half of `raw`.
/// Returns the instruction and its length in bytes (2 or 4). For a 2-byte
/// instruction the upper half of `raw` is ignored.
pub fn decode(raw: u32) -> (Inst, u8) {
    if raw & 3 != 3 {
        (decode_compressed(raw as u16), 2)
    } else {
        (decode32(raw), 4)
    }
}

fn decode32(raw: u32) -> Inst {
    let rd = bits(raw, 11, 7) as Reg;
    let rs1 = bits(raw, 19, 15) as Reg;
    let rs2 = bits(raw, 24, 20) as Reg;
    let rs3 = bits(raw, 31, 27) as Reg;
    let funct3 = bits(raw, 14, 12);
    let funct7 = bits(raw, 31, 25);
    let imm_i = sext(u64::from(raw >> 20), 12);
    let imm_s = sext(u64::from((bits(raw, 31, 25) << 5) | bits(raw, 11, 7)), 12);
    let imm_b = sext(
        u64::from(
            (bits(raw, 31, 31) << 12)
                | (bits(raw, 7, 7) << 11)
                | (bits(raw, 30, 25) << 5)
                | (bits(raw, 11, 8) << 1),
        ),
        13,
    );
    let imm_u = i64::from((raw & 0xffff_f000) as i32);
    let imm_j = sext(
        u64::from(
            (bits(raw, 31, 31) << 20)
                | (bits(raw, 19, 12) << 12)
                | (bits(raw, 20, 20) << 11)
                | (bits(raw, 30, 21) << 1),
        ),
        21,
    );
    let rm = funct3 as u8;
    match bits(raw, 6, 0) {
        0x37 => Inst::Lui { rd, imm: imm_u },
        0x17 => Inst::Auipc { rd, imm: imm_u },
        0x6f => Inst::Jal { rd, off: imm_j },
        0x67 if funct3 == 0 => Inst::Jalr {
            rd,
            rs1,
            off: imm_i,
        },
        0x63 => {
            let op = match funct3 {
                0 => BranchOp::Eq,
                1 => BranchOp::Ne,
                4 => BranchOp::Lt,
                5 => BranchOp::Ge,
                6 => BranchOp::Ltu,
                7 => BranchOp::Geu,
                _ => return Inst::Illegal,
            };
            Inst::Branch {
                op,
                rs1,
                rs2,
                off: imm_b,
            }
        }
        0x03 => {
            let op = match funct3 {
                0 => LoadOp::B,
                1 => LoadOp::H,
                2 => LoadOp::W,
                3 => LoadOp::D,
                4 => LoadOp::Bu,
                5 => LoadOp::Hu,
                6 => LoadOp::Wu,
                _ => return Inst::Illegal,
            };
            Inst::Load {
                op,
                rd,
                rs1,
                off: imm_i,
            }
        }
        0x23 => {
            let op = match funct3 {
                0 => StoreOp::B,
                1 => StoreOp::H,
                2 => StoreOp::W,
                3 => StoreOp::D,
                _ => return Inst::Illegal,
            };
            Inst::Store {
                op,
                rs1,
                rs2,
                off: imm_s,
            }
        }
        0x13 => {
            let shamt = i64::from(bits(raw, 25, 20));
            let op = match funct3 {
                0 => AluOp::Add,
                2 => AluOp::Slt,
                3 => AluOp::Sltu,
                4 => AluOp::Xor,
                6 => AluOp::Or,
                7 => AluOp::And,
                1 if bits(raw, 31, 26) == 0 => {
                    return Inst::OpImm {
                        op: AluOp::Sll,
                        word: false,
                        rd,
                        rs1,
                        imm: shamt,
                    }
                }
                5 if bits(raw, 31, 26) == 0 => {
                    return Inst::OpImm {
                        op: AluOp::Srl,
                        word: false,
                        rd,
                        rs1,
                        imm: shamt,
                    }
                }
                5 if bits(raw, 31, 26) == 0x10 => {
                    return Inst::OpImm {
                        op: AluOp::Sra,
                        word: false,
                        rd,
                        rs1,
                        imm: shamt,
                    }
                }
                _ => return Inst::Illegal,
            };
            Inst::OpImm {
                op,
                word: false,
                rd,
                rs1,
                imm: imm_i,
            }
        }
        0x1b => {
            let shamt = i64::from(bits(raw, 24, 20));
            match (funct3, funct7) {
                (0, _) => Inst::OpImm {
                    op: AluOp::Add,
                    word: true,
                    rd,
                    rs1,
                    imm: imm_i,
                },
                (1, 0) => Inst::OpImm {
                    op: AluOp::Sll,
                    word: true,
                    rd,
                    rs1,
                    imm: shamt,
                },
                (5, 0) => Inst::OpImm {
                    op: AluOp::Srl,
                    word: true,
                    rd,
                    rs1,
                    imm: shamt,
                },
                (5, 0x20) => Inst::OpImm {
                    op: AluOp::Sra,
                    word: true,
                    rd,
                    rs1,
                    imm: shamt,
                },
                _ => Inst::Illegal,
            }
        }
        opc @ (0x33 | 0x3b) => {
            let word = opc == 0x3b;
            if funct7 == 1 {
                let op = match funct3 {
                    0 => MulOp::Mul,
                    1 if !word => MulOp::Mulh,
                    2 if !word => MulOp::Mulhsu,
                    3 if !word => MulOp::Mulhu,
                    4 => MulOp::Div,
                    5 => MulOp::Divu,
                    6 => MulOp::Rem,
                    7 => MulOp::Remu,
                    _ => return Inst::Illegal,
                };
                return Inst::MulDiv {
                    op,
                    word,
                    rd,
                    rs1,
                    rs2,
                };
            }
            let op = match (funct3, funct7) {
                (0, 0) => AluOp::Add,
                (0, 0x20) => AluOp::Sub,
                (1, 0) => AluOp::Sll,
                (2, 0) if !word => AluOp::Slt,
                (3, 0) if !word => AluOp::Sltu,
                (4, 0) if !word => AluOp::Xor,
                (5, 0) => AluOp::Srl,
                (5, 0x20) => AluOp::Sra,
                (6, 0) if !word => AluOp::Or,
                (7, 0) if !word => AluOp::And,
                _ => return Inst::Illegal,
            };
            Inst::Op {
                op,
                word,
                rd,
                rs1,
                rs2,
            }
        }
        0x0f => match funct3 {
            0 => Inst::Fence,
            1 => Inst::FenceI,
            _ => Inst::Illegal,
        },
        0x73 => {
            if funct3 == 0 {
                return match (funct7, rs2, rs1, rd) {
                    (0, 0, 0, 0) => Inst::Ecall,
                    (0, 1, 0, 0) => Inst::Ebreak,
                    (0x18, 2, 0, 0) => Inst::Mret,
                    (0x08, 2, 0, 0) => Inst::Sret,
                    (0x08, 5, 0, 0) => Inst::Wfi,
                    (0x09, _, _, 0) => Inst::SfenceVma { rs1, rs2 },
                    _ => Inst::Illegal,
                };
            }
            let op = match funct3 & 3 {
                1 => CsrOp::Rw,
                2 => CsrOp::Rs,
                3 => CsrOp::Rc,
                _ => return Inst::Illegal,
            };
            Inst::Csr {
                op,
                imm: funct3 & 4 != 0,
                rd,
                src: rs1,
                csr: (raw >> 20) as u16,
            }
        }
        0x2f => {
            let double = match funct3 {
                2 => false,
                3 => true,
                _ => return Inst::Illegal,
            };
            let op = match bits(raw, 31, 27) {
                0x02 if rs2 == 0 => return Inst::Lr { double, rd, rs1 },
                0x03 => {
                    return Inst::Sc {
                        double,
                        rd,
                        rs1,
                        rs2,
                    }
                }
                0x01 => AmoOp::Swap,
                0x00 => AmoOp::Add,
                0x04 => AmoOp::Xor,
                0x0c => AmoOp::And,
                0x08 => AmoOp::Or,
                0x10 => AmoOp::Min,
                0x14 => AmoOp::Max,
                0x18 => AmoOp::Minu,
                0x1c => AmoOp::Maxu,
                _ => return Inst::Illegal,
            };
            Inst::Amo {
                op,
                double,
                rd,
                rs1,
                rs2,
            }
        }
        0x07 => match funct3 {
            2 => Inst::FLoad {
                fp: Fp::S,
                rd,
                rs1,
                off: imm_i,
            },
            3 => Inst::FLoad {
                fp: Fp::D,
                rd,
                rs1,
                off: imm_i,
            },
            _ => Inst::Illegal,
        },
        0x27 => match funct3 {
            2 => Inst::FStore {
                fp: Fp::S,
                rs1,
                rs2,
                off: imm_s,
            },
            3 => Inst::FStore {
                fp: Fp::D,
                rs1,
                rs2,
                off: imm_s,
            },
            _ => Inst::Illegal,
        },
        opc @ (0x43 | 0x47 | 0x4b | 0x4f) => {
            let fp = match bits(raw, 26, 25) {
                0 => Fp::S,
                1 => Fp::D,
                _ => return Inst::Illegal,
            };
            let op = match opc {
                0x43 => FmaOp::Madd,
                0x47 => FmaOp::Msub,
                0x4b => FmaOp::Nmsub,
                _ => FmaOp::Nmadd,
            };
            if !rm_valid(rm) {
                return Inst::Illegal;
            }
            Inst::FMa {
                op,
                fp,
                rd,
                rs1,
                rs2,
                rs3,
                rm,
            }
        }
        0x53 => decode_fp(raw, rd, rs1, rs2, funct3, funct7),
        _ => Inst::Illegal,
    }
}

/// Static rounding modes 5 and 6 are reserved; 7 (dynamic) is checked
/// against frm at execution time.
fn rm_valid(rm: u8) -> bool {
    rm != 5 && rm != 6
}

fn decode_fp(raw: u32, rd: Reg, rs1: Reg, rs2: Reg, funct3: u32, funct7: u32) -> Inst {
    let fp = if funct7 & 1 == 0 { Fp::S } else { Fp::D };
    let rm = funct3 as u8;
    let _ = raw;
    let bin = |op| Inst::FBin {
        op,
        fp,
        rd,
        rs1,
        rs2,
        rm,
    };
    let arith_ok = rm_valid(rm);
    match funct7 >> 2 {
        0x00 if arith_ok => bin(FBinOp::Add),
        0x01 if arith_ok => bin(FBinOp::Sub),
        0x02 if arith_ok => bin(FBinOp::Mul),
        0x03 if arith_ok => bin(FBinOp::Div),
        0x0b if rs2 == 0 && arith_ok => Inst::FSqrt { fp, rd, rs1, rm },
        0x04 => match funct3 {
            0 => bin(FBinOp::SgnJ),
            1 => bin(FBinOp::SgnJN),
            2 => bin(FBinOp::SgnJX),
            _ => Inst::Illegal,
        },
        0x05 => match funct3 {
            0 => bin(FBinOp::Min),
            1 => bin(FBinOp::Max),
            _ => Inst::Illegal,
        },
        0x08 if arith_ok => match (fp, rs2) {
            (Fp::S, 1) => Inst::FCvtFp {
                to: Fp::S,
                rd,
                rs1,
                rm,
            },
            (Fp::D, 0) => Inst::FCvtFp {
                to: Fp::D,
                rd,
                rs1,
                rm,
            },
            _ => Inst::Illegal,
        },
        0x14 => {
            let op = match funct3 {
                0 => FCmpOp::Le,
                1 => FCmpOp::Lt,
                2 => FCmpOp::Eq,
                _ => return Inst::Illegal,
            };
            Inst::FCmp {
                op,
                fp,
                rd,
                rs1,
                rs2,
            }
        }
        0x18 | 0x1a if arith_ok => {
            let ty = match rs2 {
                0 => IntTy::W,
                1 => IntTy::Wu,
                2 => IntTy::L,
                3 => IntTy::Lu,
                _ => return Inst::Illegal,
            };
            if funct7 >> 2 == 0x18 {
                Inst::FCvtToInt {
                    fp,
                    ty,
                    rd,
                    rs1,
                    rm,
                }
            } else {
                Inst::FCvtFromInt {
                    fp,
                    ty,
                    rd,
                    rs1,
                    rm,
                }
            }
        }
        0x1c if rs2 == 0 => match funct3 {
            0 => Inst::FMvToInt { fp, rd, rs1 },
            1 => Inst::FClass { fp, rd, rs1 },
            _ => Inst::Illegal,
        },
        0x1e if rs2 == 0 && funct3 == 0 => Inst::FMvFromInt { fp, rd, rs1 },
        _ => Inst::Illegal,
    }
}

fn decode_compressed(raw: u16) -> Inst {
    let r = u32::from(raw);
    let funct3 = bits(r, 15, 13);
    // Registers x8..x15 in the 3-bit fields.
    let rd_p = (bits(r, 4, 2) + 8) as Reg;
    let rs1_p = (bits(r, 9, 7) + 8) as Reg;
    let rd = bits(r, 11, 7) as Reg;
    let rs2 = bits(r, 6, 2) as Reg;
    let imm6 = sext(u64::from((bits(r, 12, 12) << 5) | bits(r, 6, 2)), 6);
    let uimm_w = i64::from((bits(r, 5, 5) << 6) | (bits(r, 12, 10) << 3) | (bits(r, 6, 6) << 2));
    let uimm_d = i64::from((bits(r, 6, 5) << 6) | (bits(r, 12, 10) << 3));
    match (bits(r, 1, 0), funct3) {
        (0, 0) => {
            let nzuimm = (bits(r, 10, 7) << 6)
                | (bits(r, 12, 11) << 4)
                | (bits(r, 5, 5) << 3)
                | (bits(r, 6, 6) << 2);
            if nzuimm == 0 {
                return Inst::Illegal;
            }
            Inst::OpImm {
                op: AluOp::Add,
                word: false,
                rd: rd_p,
                rs1: 2,
                imm: i64::from(nzuimm),
            }
        }
        (0, 1) => Inst::FLoad {
            fp: Fp::D,
            rd: rd_p,
            rs1: rs1_p,
            off: uimm_d,
        },
        (0, 2) => Inst::Load {
            op: LoadOp::W,
            rd: rd_p,
            rs1: rs1_p,
            off: uimm_w,
        },
        (0, 3) => Inst::Load {
            op: LoadOp::D,
            rd: rd_p,
            rs1: rs1_p,
            off: uimm_d,
        },
        (0, 5) => Inst::FStore {
            fp: Fp::D,
            rs1: rs1_p,
            rs2: rd_p,
            off: uimm_d,
        },
        (0, 6) => Inst::Store {
            op: StoreOp::W,
            rs1: rs1_p,
            rs2: rd_p,
            off: uimm_w,
        },
        (0, 7) => Inst::Store {
            op: StoreOp::D,
            rs1: rs1_p,
            rs2: rd_p,
            off: uimm_d,
        },
        (1, 0) => Inst::OpImm {
            op: AluOp::Add,
            word: false,
            rd,
            rs1: rd,
            imm: imm6,
        },
        (1, 1) => {
            if rd == 0 {
                return Inst::Illegal;
            }
            Inst::OpImm {
                op: AluOp::Add,
                word: true,
                rd,
                rs1: rd,
                imm: imm6,
            }
        }
        (1, 2) => Inst::OpImm {
            op: AluOp::Add,
            word: false,
            rd,
            rs1: 0,
            imm: imm6,
        },
        (1, 3) => {
            if rd == 2 {
                let imm = sext(
                    u64::from(
                        (bits(r, 12, 12) << 9)
                            | (bits(r, 4, 3) << 7)
                            | (bits(r, 5, 5) << 6)
                            | (bits(r, 2, 2) << 5)
                            | (bits(r, 6, 6) << 4),
                    ),
                    10,
                );
                if imm == 0 {
                    return Inst::Illegal;
                }
                Inst::OpImm {
                    op: AluOp::Add,
                    word: false,
                    rd: 2,
                    rs1: 2,
                    imm,
                }
            } else {
                if imm6 == 0 {
                    return Inst::Illegal;
                }
                Inst::Lui {
                    rd,
                    imm: imm6 << 12,
                }
            }
        }
        (1, 4) => {
            let shamt = i64::from((bits(r, 12, 12) << 5) | bits(r, 6, 2));
            match bits(r, 11, 10) {
                0 => Inst::OpImm {
                    op: AluOp::Srl,
                    word: false,
                    rd: rs1_p,
                    rs1: rs1_p,
                    imm: shamt,
                },
                1 => Inst::OpImm {
                    op: AluOp::Sra,
                    word: false,
                    rd: rs1_p,
                    rs1: rs1_p,
                    imm: shamt,
                },
                2 => Inst::OpImm {
                    op: AluOp::And,
                    word: false,
                    rd: rs1_p,
                    rs1: rs1_p,
                    imm: imm6,
                },
                _ => {
                    let (op, word) = match (bits(r, 12, 12), bits(r, 6, 5)) {
                        (0, 0) => (AluOp::Sub, false),
                        (0, 1) => (AluOp::Xor, false),
                        (0, 2) => (AluOp::Or, false),
                        (0, 3) => (AluOp::And, false),
                        (1, 0) => (AluOp::Sub, true),
                        (1, 1) => (AluOp::Add, true),
                        _ => return Inst::Illegal,
                    };
                    Inst::Op {
                        op,
                        word,
                        rd: rs1_p,
                        rs1: rs1_p,
                        rs2: rd_p,
                    }
                }
            }
        }
        (1, 5) => {
            let off = sext(
                u64::from(
                    (bits(r, 12, 12) << 11)
                        | (bits(r, 8, 8) << 10)
                        | (bits(r, 10, 9) << 8)
                        | (bits(r, 6, 6) << 7)
                        | (bits(r, 7, 7) << 6)
                        | (bits(r, 2, 2) << 5)
                        | (bits(r, 11, 11) << 4)
                        | (bits(r, 5, 3) << 1),
                ),
                12,
            );
            Inst::Jal { rd: 0, off }
        }
        (1, f @ (6 | 7)) => {
            let off = sext(
                u64::from(
                    (bits(r, 12, 12) << 8)
                        | (bits(r, 6, 5) << 6)
                        | (bits(r, 2, 2) << 5)
                        | (bits(r, 11, 10) << 3)
                        | (bits(r, 4, 3) << 1),
                ),
                9,
            );
            let op = if f == 6 { BranchOp::Eq } else { BranchOp::Ne };
            Inst::Branch {
                op,
                rs1: rs1_p,
                rs2: 0,
                off,
            }
        }
        (2, 0) => {
            let shamt = i64::from((bits(r, 12, 12) << 5) | bits(r, 6, 2));
            Inst::OpImm {
                op: AluOp::Sll,
                word: false,
                rd,
                rs1: rd,
                imm: shamt,
            }
        }
        (2, 1) => {
            let off =
                i64::from((bits(r, 4, 2) << 6) | (bits(r, 12, 12) << 5) | (bits(r, 6, 5) << 3));
            Inst::FLoad {
                fp: Fp::D,
                rd,
                rs1: 2,
                off,
            }
        }
        (2, 2) => {
            if rd == 0 {
                return Inst::Illegal;
            }
            let off =
                i64::from((bits(r, 3, 2) << 6) | (bits(r, 12, 12) << 5) | (bits(r, 6, 4) << 2));
            Inst::Load {
                op: LoadOp::W,
                rd,
                rs1: 2,
                off,
            }
        }
        (2, 3) => {
            if rd == 0 {
                return Inst::Illegal;
            }
            let off =
                i64::from((bits(r, 4, 2) << 6) | (bits(r, 12, 12) << 5) | (bits(r, 6, 5) << 3));
            Inst::Load {
                op: LoadOp::D,
                rd,
                rs1: 2,
                off,
            }
        }
        (2, 4) => match (bits(r, 12, 12), rd, rs2) {
            (0, 0, 0) => Inst::Illegal,
            (0, _, 0) => Inst::Jalr {
                rd: 0,
                rs1: rd,
                off: 0,
            },
            (0, _, _) => Inst::Op {
                op: AluOp::Add,
                word: false,
                rd,
                rs1: 0,
                rs2,
            },
            (_, 0, 0) => Inst::Ebreak,
            (_, _, 0) => Inst::Jalr {
                rd: 1,
                rs1: rd,
                off: 0,
            },
            _ => Inst::Op {
                op: AluOp::Add,
                word: false,
                rd,
                rs1: rd,
                rs2,
            },
        },
        (2, 5) => {
            let off = i64::from((bits(r, 9, 7) << 6) | (bits(r, 12, 10) << 3));
            Inst::FStore {
                fp: Fp::D,
                rs1: 2,
                rs2,
                off,
            }
        }
        (2, 6) => {
            let off = i64::from((bits(r, 8, 7) << 6) | (bits(r, 12, 9) << 2));
            Inst::Store {
                op: StoreOp::W,
                rs1: 2,
                rs2,
                off,
            }
        }
        (2, 7) => {
            let off = i64::from((bits(r, 9, 7) << 6) | (bits(r, 12, 10) << 3));
            Inst::Store {
                op: StoreOp::D,
                rs1: 2,
                rs2,
                off,
            }
        }
        _ => Inst::Illegal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_integer_encodings() {
        // addi a0, a0, -1
        assert_eq!(
            decode(0xfff5_0513),
            (
                Inst::OpImm {
                    op: AluOp::Add,
                    word: false,
                    rd: 10,
                    rs1: 10,
                    imm: -1
                },
                4
            )
        );
        // lui a0, 0x80000 (sign-extends on RV64)
        assert_eq!(
            decode(0x8000_0537).0,
            Inst::Lui {
                rd: 10,
                imm: -0x8000_0000
            }
        );
        // auipc t0, 0
        assert_eq!(decode(0x0000_0297).0, Inst::Auipc { rd: 5, imm: 0 });
        // jal ra, -4 (0xffdff0ef)
        assert_eq!(decode(0xffdf_f0ef).0, Inst::Jal { rd: 1, off: -4 });
        // jalr x0, 0(ra) = ret
        assert_eq!(
            decode(0x0000_8067).0,
            Inst::Jalr {
                rd: 0,
                rs1: 1,
                off: 0
            }
        );
        // bne a0, a1, -8 (0xfeb51ce3)
        assert_eq!(
            decode(0xfeb5_1ce3).0,
            Inst::Branch {
                op: BranchOp::Ne,
                rs1: 10,
                rs2: 11,
                off: -8
            }
        );
        // ld a1, 8(sp)
        assert_eq!(
            decode(0x0081_3583).0,
            Inst::Load {
                op: LoadOp::D,
                rd: 11,
                rs1: 2,
                off: 8
            }
        );
        // sd a1, -16(sp) (0xfeb13823)
        assert_eq!(
            decode(0xfeb1_3823).0,
            Inst::Store {
                op: StoreOp::D,
                rs1: 2,
                rs2: 11,
                off: -16
            }
        );
        // srai a0, a0, 63 (0x43f55513)
        assert_eq!(
            decode(0x43f5_5513).0,
            Inst::OpImm {
                op: AluOp::Sra,
                word: false,
                rd: 10,
                rs1: 10,
                imm: 63
            }
        );
        // sraiw a0, a0, 31 (0x41f5551b)
        assert_eq!(
            decode(0x41f5_551b).0,
            Inst::OpImm {
                op: AluOp::Sra,
                word: true,
                rd: 10,
                rs1: 10,
                imm: 31
            }
        );
        // sub a0, a1, a2 (0x40c58533); subw (0x40c5853b)
        assert_eq!(
            decode(0x40c5_8533).0,
            Inst::Op {
                op: AluOp::Sub,
                word: false,
                rd: 10,
                rs1: 11,
                rs2: 12
            }
        );
        assert_eq!(
            decode(0x40c5_853b).0,
            Inst::Op {
                op: AluOp::Sub,
                word: true,
                rd: 10,
                rs1: 11,
                rs2: 12
            }
        );
        // mulhsu a0, a1, a2 (0x02c5a533); divuw (0x02c5d53b)
        assert_eq!(
            decode(0x02c5_a533).0,
            Inst::MulDiv {
                op: MulOp::Mulhsu,
                word: false,
                rd: 10,
                rs1: 11,
                rs2: 12
            }
        );
        assert_eq!(
            decode(0x02c5_d53b).0,
            Inst::MulDiv {
                op: MulOp::Divu,
                word: true,
                rd: 10,
                rs1: 11,
                rs2: 12
            }
        );
        // mulhw does not exist
        assert_eq!(decode(0x02c5_953b).0, Inst::Illegal);
    }

    #[test]
    fn system_and_csr() {
        assert_eq!(decode(0x0000_0073).0, Inst::Ecall);
        assert_eq!(decode(0x0010_0073).0, Inst::Ebreak);
        assert_eq!(decode(0x3020_0073).0, Inst::Mret);
        assert_eq!(decode(0x1020_0073).0, Inst::Sret);
        assert_eq!(decode(0x1050_0073).0, Inst::Wfi);
        assert_eq!(decode(0x1200_0073).0, Inst::SfenceVma { rs1: 0, rs2: 0 });
        assert_eq!(decode(0x0000_100f).0, Inst::FenceI);
        assert_eq!(decode(0x0ff0_000f).0, Inst::Fence);
        // csrrw a0, mstatus, a1 (0x30059573)
        assert_eq!(
            decode(0x3005_9573).0,
            Inst::Csr {
                op: CsrOp::Rw,
                imm: false,
                rd: 10,
                src: 11,
                csr: 0x300
            }
        );
        // csrrci zero, sstatus, 2 (0x10017073)
        assert_eq!(
            decode(0x1001_7073).0,
            Inst::Csr {
                op: CsrOp::Rc,
                imm: true,
                rd: 0,
                src: 2,
                csr: 0x100
            }
        );
        assert_eq!(decode(0x0000_4073).0, Inst::Illegal);
    }

    #[test]
    fn atomics() {
        // lr.d a0, (a1) (0x1005b52f); sc.w a0, a2, (a1) (0x18c5a52f)
        assert_eq!(
            decode(0x1005_b52f).0,
            Inst::Lr {
                double: true,
                rd: 10,
                rs1: 11
            }
        );
        assert_eq!(
            decode(0x18c5_a52f).0,
            Inst::Sc {
                double: false,
                rd: 10,
                rs1: 11,
                rs2: 12
            }
        );
        // amoadd.w.aqrl a0, a2, (a1) (0x06c5a52f)
        assert_eq!(
            decode(0x06c5_a52f).0,
            Inst::Amo {
                op: AmoOp::Add,
                double: false,
                rd: 10,
                rs1: 11,
                rs2: 12
            }
        );
        // amomaxu.d (0xe0c5b52f)
        assert_eq!(
            decode(0xe0c5_b52f).0,
            Inst::Amo {
                op: AmoOp::Maxu,
                double: true,
                rd: 10,
                rs1: 11,
                rs2: 12
            }
        );
        // lr with rs2 != 0 is reserved
        assert_eq!(decode(0x1015_b52f).0, Inst::Illegal);
    }

    #[test]
    fn floating_point() {
        // fadd.d fa0, fa1, fa2, dyn (0x02c5f553)
        assert_eq!(
            decode(0x02c5_f553).0,
            Inst::FBin {
                op: FBinOp::Add,
                fp: Fp::D,
                rd: 10,
                rs1: 11,
                rs2: 12,
                rm: 7
            }
        );
        // fmadd.s fa0, fa1, fa2, fa3, rne (0x68c58543)
        assert_eq!(
            decode(0x68c5_8543).0,
            Inst::FMa {
                op: FmaOp::Madd,
                fp: Fp::S,
                rd: 10,
                rs1: 11,
                rs2: 12,
                rs3: 13,
                rm: 0
            }
        );
        // fsqrt.d fa0, fa1 (0x5a05f553)
        assert_eq!(
            decode(0x5a05_f553).0,
            Inst::FSqrt {
                fp: Fp::D,
                rd: 10,
                rs1: 11,
                rm: 7
            }
        );
        // fcvt.w.s a0, fa1, rtz (0xc0059553)
        assert_eq!(
            decode(0xc005_9553).0,
            Inst::FCvtToInt {
                fp: Fp::S,
                ty: IntTy::W,
                rd: 10,
                rs1: 11,
                rm: 1
            }
        );
        // fcvt.d.lu fa0, a1 (0xd235f553)
        assert_eq!(
            decode(0xd235_f553).0,
            Inst::FCvtFromInt {
                fp: Fp::D,
                ty: IntTy::Lu,
                rd: 10,
                rs1: 11,
                rm: 7
            }
        );
        // fcvt.s.d fa0, fa1 (0x4015f553); fcvt.d.s fa0, fa1 (0x42058553)
        assert_eq!(
            decode(0x4015_f553).0,
            Inst::FCvtFp {
                to: Fp::S,
                rd: 10,
                rs1: 11,
                rm: 7
            }
        );
        assert_eq!(
            decode(0x4205_8553).0,
            Inst::FCvtFp {
                to: Fp::D,
                rd: 10,
                rs1: 11,
                rm: 0
            }
        );
        // fmv.x.d a0, fa1 (0xe2058553); fclass.s a0, fa1 (0xe0059553)
        assert_eq!(
            decode(0xe205_8553).0,
            Inst::FMvToInt {
                fp: Fp::D,
                rd: 10,
                rs1: 11
            }
        );
        assert_eq!(
            decode(0xe005_9553).0,
            Inst::FClass {
                fp: Fp::S,
                rd: 10,
                rs1: 11
            }
        );
        // fmv.w.x fa0, a1 (0xf0058553)
        assert_eq!(
            decode(0xf005_8553).0,
            Inst::FMvFromInt {
                fp: Fp::S,
                rd: 10,
                rs1: 11
            }
        );
        // feq.d a0, fa1, fa2 (0xa2c5a553)
        assert_eq!(
            decode(0xa2c5_a553).0,
            Inst::FCmp {
                op: FCmpOp::Eq,
                fp: Fp::D,
                rd: 10,
                rs1: 11,
                rs2: 12
            }
        );
        // fld fa0, 8(sp) (0x00813507); fsw fa0, 4(sp) (0x00a12227)
        assert_eq!(
            decode(0x0081_3507).0,
            Inst::FLoad {
                fp: Fp::D,
                rd: 10,
                rs1: 2,
                off: 8
            }
        );
        assert_eq!(
            decode(0x00a1_2227).0,
            Inst::FStore {
                fp: Fp::S,
                rs1: 2,
                rs2: 10,
                off: 4
            }
        );
        // reserved rounding mode 5 on fadd
        assert_eq!(decode(0x02c5_d553).0, Inst::Illegal);
    }

    #[test]
    fn compressed() {
        // c.addi4spn a0, sp, 16 (0x0808)
        assert_eq!(
            decode(0x0808),
            (
                Inst::OpImm {
                    op: AluOp::Add,
                    word: false,
                    rd: 10,
                    rs1: 2,
                    imm: 16
                },
                2
            )
        );
        // c.li a0, -1 (0x557d)
        assert_eq!(
            decode(0x557d).0,
            Inst::OpImm {
                op: AluOp::Add,
                word: false,
                rd: 10,
                rs1: 0,
                imm: -1
            }
        );
        // c.addi16sp sp, -64 (0x7139)
        assert_eq!(
            decode(0x7139).0,
            Inst::OpImm {
                op: AluOp::Add,
                word: false,
                rd: 2,
                rs1: 2,
                imm: -64
            }
        );
        // c.lui a0, 0xfffff (0x757d) -> lui a0, -4096
        assert_eq!(decode(0x757d).0, Inst::Lui { rd: 10, imm: -4096 });
        // c.ld a0, 8(a1) (0x6588); c.sd a0, 8(a1) (0xe588)
        assert_eq!(
            decode(0x6588).0,
            Inst::Load {
                op: LoadOp::D,
                rd: 10,
                rs1: 11,
                off: 8
            }
        );
        assert_eq!(
            decode(0xe588).0,
            Inst::Store {
                op: StoreOp::D,
                rs1: 11,
                rs2: 10,
                off: 8
            }
        );
        // c.j -2 (0xbffd)
        assert_eq!(decode(0xbffd).0, Inst::Jal { rd: 0, off: -2 });
        // c.beqz a0, 6 (0xc119)
        assert_eq!(
            decode(0xc119).0,
            Inst::Branch {
                op: BranchOp::Eq,
                rs1: 10,
                rs2: 0,
                off: 6
            }
        );
        // c.jr ra (0x8082); c.jalr a0 (0x9502); c.mv a0, a1 (0x852e); c.add a0, a1 (0x952e)
        assert_eq!(
            decode(0x8082).0,
            Inst::Jalr {
                rd: 0,
                rs1: 1,
                off: 0
            }
        );
        assert_eq!(
            decode(0x9502).0,
            Inst::Jalr {
                rd: 1,
                rs1: 10,
                off: 0
            }
        );
        assert_eq!(
            decode(0x852e).0,
            Inst::Op {
                op: AluOp::Add,
                word: false,
                rd: 10,
                rs1: 0,
                rs2: 11
            }
        );
        assert_eq!(
            decode(0x952e).0,
            Inst::Op {
                op: AluOp::Add,
                word: false,
                rd: 10,
                rs1: 10,
                rs2: 11
            }
        );
        // c.ebreak (0x9002)
        assert_eq!(decode(0x9002).0, Inst::Ebreak);
        // c.ldsp a0, 8(sp) (0x6522); c.sdsp a0, 8(sp) (0xe42a)
        assert_eq!(
            decode(0x6522).0,
            Inst::Load {
                op: LoadOp::D,
                rd: 10,
                rs1: 2,
                off: 8
            }
        );
        assert_eq!(
            decode(0xe42a).0,
            Inst::Store {
                op: StoreOp::D,
                rs1: 2,
                rs2: 10,
                off: 8
            }
        );
        // c.subw a0, a1 (0x9d0d); c.addw a0, a1 (0x9d2d)
        assert_eq!(
            decode(0x9d0d).0,
            Inst::Op {
                op: AluOp::Sub,
                word: true,
                rd: 10,
                rs1: 10,
                rs2: 11
            }
        );
        assert_eq!(
            decode(0x9d2d).0,
            Inst::Op {
                op: AluOp::Add,
                word: true,
                rd: 10,
                rs1: 10,
                rs2: 11
            }
        );
        // c.srai a0, 1 (0x8505); c.andi a0, -1 (0x997d)
        assert_eq!(
            decode(0x8505).0,
            Inst::OpImm {
                op: AluOp::Sra,
                word: false,
                rd: 10,
                rs1: 10,
                imm: 1
            }
        );
        assert_eq!(
            decode(0x997d).0,
            Inst::OpImm {
                op: AluOp::And,
                word: false,
                rd: 10,
                rs1: 10,
                imm: -1
            }
        );
        // c.fldsp fa0, 8(sp) (0x2522)
        assert_eq!(
            decode(0x2522).0,
            Inst::FLoad {
                fp: Fp::D,
                rd: 10,
                rs1: 2,
                off: 8
            }
        );
        // all-zero halfword is the defined illegal instruction
        assert_eq!(decode(0x0000).0, Inst::Illegal);
    }

    /// Every 16-bit pattern decodes without panicking, and the C expansions
    /// never produce an instruction a 16-bit encoding cannot express.
    #[test]
    fn compressed_space_is_total() {
        for raw in 0..=u16::MAX {
            if raw & 3 == 3 {
                continue;
            }
            let (inst, len) = decode(u32::from(raw));
            assert_eq!(len, 2);
            assert!(
                !matches!(
                    inst,
                    Inst::Csr { .. } | Inst::Amo { .. } | Inst::MulDiv { .. } | Inst::FMa { .. }
                ),
                "{raw:#06x} -> {inst:?}"
            );
        }
    }

    /// A sweep through 32-bit encodings: decode is total (never panics) and
    /// always reports length 4 for words whose low bits are 0b11.
    #[test]
    fn decode_is_total_on_sampled_32bit_space() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2_000_000 {
            // xorshift32: deterministic, covers all opcodes and fields.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let raw = x | 3;
            assert_eq!(decode(raw).1, 4);
        }
    }
}

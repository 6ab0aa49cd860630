//! The arithmetic the emulated instructions perform, with the status flags exactly as the
//! SDM's instruction pages define them (vol. 2, ADD, SUB, CMP, AND, OR, XOR, TEST; vol. 1
//! 3.4.3.1 for the flags).

/// RFLAGS bits (SDM vol. 1 3.4.3).
pub const CF: u64 = 1 << 0;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
/// RF: cleared when an instruction completes (SDM vol. 3A 18.3.1.1).
pub const RF: u64 = 1 << 16;
/// The six status flags an arithmetic or logic instruction writes.
pub const STATUS_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

/// A two-operand arithmetic or logic operation. CMP is [`AluOp::Sub`] and TEST is
/// [`AluOp::And`] with the result discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Sub,
    And,
    Or,
    Xor,
}

/// All ones in the low `size` bytes (1, 2, 4 or 8).
pub fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// Sign-extend the low `size` bytes of `value` to 64 bits.
pub fn sign_extend(value: u64, size: u8) -> u64 {
    let shift = 64 - u32::from(size.clamp(1, 8)) * 8;
    (((value << shift) as i64) >> shift) as u64
}

/// `a op b` on `size`-byte operands: the result (in the low `size` bytes) and the six status
/// flags it sets, as RFLAGS bits (AF, which the SDM leaves undefined for the logic
/// operations, is cleared there).
pub fn alu(op: AluOp, a: u64, b: u64, size: u8) -> (u64, u64) {
    let mask = size_mask(size);
    let sign = mask ^ (mask >> 1);
    let (a, b) = (a & mask, b & mask);
    let (result, carry, overflow, aux) = match op {
        AluOp::Add => {
            let r = a.wrapping_add(b) & mask;
            (r, r < a, (a ^ r) & (b ^ r) & sign != 0, (a ^ b ^ r) & 0x10 != 0)
        }
        AluOp::Sub => {
            let r = a.wrapping_sub(b) & mask;
            (r, a < b, (a ^ b) & (a ^ r) & sign != 0, (a ^ b ^ r) & 0x10 != 0)
        }
        AluOp::And => (a & b, false, false, false),
        AluOp::Or => (a | b, false, false, false),
        AluOp::Xor => (a ^ b, false, false, false),
    };
    let mut flags = 0;
    if carry {
        flags |= CF;
    }
    if (result as u8).count_ones().is_multiple_of(2) {
        flags |= PF;
    }
    if aux {
        flags |= AF;
    }
    if result == 0 {
        flags |= ZF;
    }
    if result & sign != 0 {
        flags |= SF;
    }
    if overflow {
        flags |= OF;
    }
    (result, flags)
}

/// RFLAGS with its status flags replaced by `flags`.
pub fn with_status_flags(rflags: u64, flags: u64) -> u64 {
    (rflags & !STATUS_FLAGS) | (flags & STATUS_FLAGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sets_carry_zero_parity_and_aux_on_wrap() {
        // 0xFF + 0x01 = 0x00: carry out, zero, even parity, carry out of bit 3.
        assert_eq!(alu(AluOp::Add, 0xFF, 1, 1), (0, CF | ZF | PF | AF));
    }

    #[test]
    fn add_sets_overflow_and_sign_on_signed_overflow() {
        // 0x7FFF_FFFF + 1 = 0x8000_0000: signed overflow, negative, parity of 0x00 even, AF.
        assert_eq!(alu(AluOp::Add, 0x7FFF_FFFF, 1, 4), (0x8000_0000, OF | SF | PF | AF));
        // 64-bit: 0x8000_0000_0000_0000 + 0x8000_0000_0000_0000 = 0: carry, overflow, zero.
        assert_eq!(alu(AluOp::Add, 1 << 63, 1 << 63, 8), (0, CF | OF | ZF | PF));
    }

    #[test]
    fn add_without_carries_sets_only_result_flags() {
        // 0x12 + 0x01 = 0x13: 0b0001_0011 has three bits set, odd parity: no flags.
        assert_eq!(alu(AluOp::Add, 0x12, 1, 1), (0x13, 0));
    }

    #[test]
    fn sub_borrows_into_carry_and_aux() {
        // 0 - 1 = 0xFFFF: borrow, negative, parity of 0xFF even, borrow from bit 4.
        assert_eq!(alu(AluOp::Sub, 0, 1, 2), (0xFFFF, CF | SF | PF | AF));
        // 0x8000 - 1 = 0x7FFF: signed overflow (negative minus positive gives positive).
        assert_eq!(alu(AluOp::Sub, 0x8000, 1, 2), (0x7FFF, OF | PF | AF));
        // Equal operands: zero, parity even, no carry.
        assert_eq!(alu(AluOp::Sub, 5, 5, 4), (0, ZF | PF));
    }

    #[test]
    fn logic_ops_clear_carry_and_overflow() {
        assert_eq!(alu(AluOp::And, 0xF0, 0x0F, 1), (0, ZF | PF));
        assert_eq!(alu(AluOp::Or, 0x8000_0000, 1, 4), (0x8000_0001, SF));
        assert_eq!(alu(AluOp::Xor, 0x3, 0x1, 1), (0x2, 0));
    }

    #[test]
    fn operands_are_truncated_to_size() {
        assert_eq!(alu(AluOp::Add, 0x1_0000_00FF, 0x1, 1).0, 0);
        assert_eq!(sign_extend(0x80, 1), 0xFFFF_FFFF_FFFF_FF80);
        assert_eq!(sign_extend(0x7FFF, 2), 0x7FFF);
        assert_eq!(with_status_flags(CF | DF | 2, ZF), DF | 2 | ZF);
    }
}

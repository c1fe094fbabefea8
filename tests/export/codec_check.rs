// Checks kvmspe.rs's MaxBuffSize codec against a table kvmspe wrote (the
// format is described in codec_check.c). Exit 0 when every line agrees.
#[path = "kvmspe.rs"]
mod kvmspe;

use std::process::exit;

fn get(tok: &str) -> Option<u64> {
    if tok == "-" {
        None
    } else {
        Some(u64::from_str_radix(tok, 16).expect("hex number"))
    }
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: codec_check TABLE");
    let text = std::fs::read_to_string(&path).expect("readable table");
    let pages = [kvmspe::KVMSPE_PAGE_SIZE_4K as u64, kvmspe::KVMSPE_PAGE_SIZE_16K as u64, kvmspe::KVMSPE_PAGE_SIZE_64K as u64];
    let mut bad = 0u64;
    let mut lines = 0u64;
    let mut check = |line: u64, what: &str, want: Option<u64>, got: Option<u64>| {
        if want != got {
            if bad < 10 {
                println!("line {}: {}: expected {:?}, got {:?}", line, what, want, got);
            }
            bad += 1;
        }
    };
    for raw in text.lines() {
        lines += 1;
        let t: Vec<&str> = raw.split_whitespace().collect();
        if t.len() == 4 && t[0] == "D" {
            let field = get(t[1]).unwrap() as u32;
            let want = if get(t[2]) == Some(1) { get(t[3]) } else { None };
            check(lines, "decode", want, kvmspe::maxbuffsize_decode(field));
        } else if t.len() == 10 && t[0] == "S" {
            let size = get(t[1]).unwrap();
            check(lines, "is_representable", get(t[2]), Some(kvmspe::maxbuffsize_is_representable(size) as u64));
            check(lines, "encode", get(t[3]), kvmspe::maxbuffsize_encode(size).map(u64::from));
            for (i, page) in pages.iter().enumerate() {
                check(lines, "round_down", get(t[4 + 2 * i]), kvmspe::maxbuffsize_round_down(size, *page));
                check(lines, "round_up", get(t[5 + 2 * i]), kvmspe::maxbuffsize_round_up(size, *page));
            }
        } else {
            check(lines, "line not understood", Some(0), None);
        }
    }
    if kvmspe::maxbuffsize_round_down(4096, 8192).is_some() || kvmspe::maxbuffsize_round_up(4096, 0).is_some() {
        println!("a page size of 8 KiB or 0 was accepted");
        bad += 1;
    }
    // The module's codec is const fn: usable in constants.
    const TWO_MIB: Option<u16> = kvmspe::maxbuffsize_encode(2 << 20);
    if TWO_MIB != Some(0x200) {
        println!("const encode(2 MiB) = {:?}", TWO_MIB);
        bad += 1;
    }
    println!("{} lines, {} mismatches", lines, bad);
    exit(if bad == 0 { 0 } else { 1 });
}

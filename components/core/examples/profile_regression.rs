use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let data = std::fs::read(&path).unwrap();
    let opts = steerlm_core::template::TemplateOptions::default();
    for _ in 0..3 {
        let t = Instant::now();
        let mut total = 0;
        for chunk in data.chunks(4 << 20) {
            let _ = chunk;
        }
        // convert in ~4MB whole-line chunks
        let mut start = 0;
        while start < data.len() {
            let mut end = (start + (4 << 20)).min(data.len());
            while end < data.len() && data[end - 1] != b'\n' {
                end += 1;
            }
            let out = steerlm_core::regression::convert(&data[start..end], 1, opts);
            total += out.output.len();
            start = end;
        }
        let s = t.elapsed().as_secs_f64();
        println!("convert: {:.3}s {:.1} MB/s out={}", s, data.len() as f64 / 1e6 / s, total);
        let t = Instant::now();
        let mut n = 0usize;
        for line in data.split(|b| *b == b'\n') {
            n += std::str::from_utf8(line).unwrap().len();
        }
        let s = t.elapsed().as_secs_f64();
        println!("split+utf8: {:.3}s {n}", s);
        let t = Instant::now();
        let mut n = 0usize;
        let mut st = 0;
        for end in memchr::memchr_iter(b'\n', &data) {
            n += std::str::from_utf8(&data[st..end]).unwrap().len();
            st = end + 1;
        }
        let s = t.elapsed().as_secs_f64();
        println!("memchr split: {:.3}s {n}", s);
        let t = Instant::now();
        let mut n = 0;
        for line in data.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let s = std::str::from_utf8(line).unwrap();
            let r = steerlm_core::record::SftRecord::parse(s).unwrap();
            n += r.conversations.len();
        }
        let s = t.elapsed().as_secs_f64();
        println!("parse only: {:.3}s {:.1} MB/s {n}", s, data.len() as f64 / 1e6 / s);
    }
}
#[allow(dead_code)]
fn unused() {}

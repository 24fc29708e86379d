//! Models split across GGUF files (llama.cpp's `NAME-00001-of-0000N.gguf` ...), as gguf-py's writer
//! splits them (`scripts/split-ggufs.sh`): the first file's path converts, plans and streams into
//! the very package of the GGUF they were split from, byte for byte; files out of place are refused
//! by name. SmolLM2 in 3 files; tiny Qwen3 in 3; tiny Phi-3 with only the metadata in its first
//! file and its LongRoPE factor tensors (which planning reads) in a later one.

mod common;

use std::io::Read;
use std::path::Path;

use hearth_core::convert::{convert, plan_gguf, tensors_read_to_plan, ConvertOptions, GgufStream};
use hearth_core::gguf::GgufFile;

/// Small shards for the tiny models, so tensors cross shards (and files cross shards).
fn options(whole: &Path) -> ConvertOptions {
    let tiny = std::fs::metadata(whole).unwrap().len() < 1 << 20;
    ConvertOptions { shard_bytes: if tiny { 8 << 10 } else { 16 << 20 }, ..Default::default() }
}

/// The package's manifest as JSON, less what names the source file.
fn manifest_json(dir: &Path) -> serde_json::Value {
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["source"]["file"] = serde_json::Value::Null;
    m
}

#[test]
fn a_split_model_converts_into_the_package_of_the_file_it_was_split_from() {
    for (files, whole) in common::split_ggufs() {
        let opts = options(&whole);
        let tmp = tempfile::tempdir().unwrap();
        let (split_dir, whole_dir) = (tmp.path().join("split"), tmp.path().join("whole"));
        let split = convert(&files[0], &split_dir, &opts).unwrap();
        let one = convert(&whole, &whole_dir, &opts).unwrap();
        assert!(split.shards.len() >= 3, "{}: {} shards", whole.display(), split.shards.len());
        assert_eq!(split.shards, one.shards, "{}", files[0].display());
        for f in &one.files {
            assert_eq!(
                std::fs::read(split_dir.join(&f.file)).unwrap(),
                std::fs::read(whole_dir.join(&f.file)).unwrap()
            );
        }
        assert_eq!(manifest_json(&split_dir), manifest_json(&whole_dir), "{}", files[0].display());
        // The plan from the headers alone is that package too.
        let mut planned = serde_json::to_value(plan_gguf(&files[0], &opts).unwrap()).unwrap();
        let mut written = serde_json::to_value(&split).unwrap();
        for m in [&mut planned, &mut written] {
            for s in m["shards"].as_array_mut().unwrap() {
                s["sha256"] = "".into();
            }
        }
        assert_eq!(planned, written, "{}: planned", files[0].display());
        // Each file holds some of the tensors (the first of Phi-3's none), all of them together.
        let counts: Vec<usize> = files.iter().map(|f| header_of(f, u64::MAX).tensors.len()).collect();
        let total = GgufFile::open(&whole).unwrap().tensors.len();
        assert_eq!(counts.iter().sum::<usize>(), total, "{counts:?}");
        assert!(counts[1] > 0 && counts[2] > 0, "{}: {counts:?}", whole.display());
    }
}

/// File `path`'s header from its first `prefix` bytes (the browser's range request).
fn header_of(path: &Path, prefix: u64) -> GgufFile {
    let len = std::fs::metadata(path).unwrap().len();
    let mut bytes = Vec::new();
    std::fs::File::open(path).unwrap().take(prefix.min(len)).read_to_end(&mut bytes).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    GgufFile::from_prefix(&bytes, len, &name).unwrap().expect("the header fits the prefix")
}

/// The files' bytes back to back (`all`) from byte `from`, fed in pieces of `piece` bytes.
fn feed(stream: &mut GgufStream, all: &[u8], from: u64, piece: usize) -> Vec<hearth_core::convert::FinishedShard> {
    all[from as usize..].chunks(piece).flat_map(|c| stream.feed(c).unwrap()).collect()
}

#[test]
fn a_split_model_streams_from_its_files_headers_into_that_package() {
    for (files, whole) in common::split_ggufs() {
        let opts = options(&whole);
        let tmp = tempfile::tempdir().unwrap();
        let written = convert(&whole, &tmp.path().join("whole"), &opts).unwrap();
        // Each file's header from a 2 MiB prefix, joined: the browser's reading. Then the tensors
        // planning reads (Phi-3's factors, in its second or third file) from where the joined
        // header says they are in the files back to back.
        let all: Vec<u8> = files.iter().flat_map(|f| std::fs::read(f).unwrap()).collect();
        let headers = || {
            let mut joined = GgufFile::join(files.iter().map(|f| header_of(f, 2 << 20)).collect()).unwrap();
            let wanted: Vec<_> = tensors_read_to_plan(&joined).into_iter().cloned().collect();
            for t in wanted {
                let at = t.offset as usize;
                joined.supply_tensor(&t.name, all[at..at + t.n_bytes.unwrap() as usize].to_vec()).unwrap();
            }
            joined
        };
        let mut stream = GgufStream::new(headers(), opts.clone()).unwrap();
        let from = stream.position();
        let shards = feed(&mut stream, &all, from, 65_537);
        assert!(stream.is_done(), "{}", files[0].display());
        let hashes: Vec<_> = shards.iter().map(|s| s.sha256.clone()).collect();
        let expected: Vec<_> = written.shards.iter().map(|s| s.sha256.clone()).collect();
        assert_eq!(hashes, expected, "{}", files[0].display());
        // Cut off before each shard: resumed from the byte it names (in the files back to back).
        for k in 1..shards.len() {
            let mut again = GgufStream::new(headers(), opts.clone()).unwrap();
            let at = again.resume_at(k).unwrap();
            let rest: Vec<_> = feed(&mut again, &all, at, 65_537).into_iter().map(|s| s.sha256).collect();
            assert_eq!(rest, expected[k..], "{}: resumed at shard {k} from byte {at}", files[0].display());
        }
    }
}

#[test]
fn split_files_out_of_place_are_refused_by_name() {
    let (files, _) = common::split_ggufs().into_iter().find(|(f, _)| f[0].to_string_lossy().contains("qwen3")).unwrap();
    let err = |r: hearth_core::Result<GgufFile>| r.unwrap_err().to_string();

    // Not the first file: the error says which one to give.
    let second = err(GgufFile::open(&files[1]));
    assert!(second.contains("is split 2 of 3") && second.contains("give the first"), "{second}");
    // The first file under another name: the others cannot be found.
    let tmp = tempfile::tempdir().unwrap();
    let renamed = tmp.path().join("model.gguf");
    std::fs::copy(&files[0], &renamed).unwrap();
    let e = err(GgufFile::open(&renamed));
    assert!(e.contains("is split 1 of 3") && e.contains("NAME-00001-of-00003.gguf"), "{e}");
    // A file missing: the error names it.
    let dir = tmp.path().join("two-of-three");
    std::fs::create_dir(&dir).unwrap();
    for f in &files[..2] {
        std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let e = err(GgufFile::open(dir.join(files[0].file_name().unwrap())));
    assert!(e.contains("qwen3-00003-of-00003.gguf"), "{e}");

    let header = |i: usize| header_of(&files[i], u64::MAX);
    // Out of order, too few, or a file twice.
    let e = err(GgufFile::join(vec![header(0), header(2), header(1)]));
    assert!(e.contains("is split 3 of 3, where split 2 of 3"), "{e}");
    let e = err(GgufFile::join(vec![header(0), header(1)]));
    assert!(e.contains("is split 1 of 3, where split 1 of 2"), "{e}");
    let e = err(GgufFile::join(vec![header(0), header(1), header(1)]));
    assert!(e.contains("is split 2 of 3, where split 3 of 3"), "{e}");
    // The first file alone plans nothing (its tensors are a third of the model's).
    let e = hearth_core::convert::plan_gguf_header(&header(0), &ConvertOptions::default()).unwrap_err().to_string();
    assert!(e.contains("is split 1 of 3") && e.contains("all 3 files are needed"), "{e}");
}

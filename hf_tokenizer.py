"""
The Hugging Face tokenizer backend of data.Tokenizer: a byte-level BPE `tokenizer.json` (GPT-2, GPT-NeoX,
Llama-3, Qwen2, DeepSeek-Coder) run by the `tokenizers` package, the Rust library transformers itself
uses, so token ids are the ones the model was trained on.

    from data import Tokenizer
    tok = Tokenizer.load("hf/pythia-160m")     # a folder with tokenizer.json (and tokenizer_config.json)

`tokenizers` is an optional dependency, imported only when such a file is loaded. A tokenizer.json is
accepted only if data.Tokenizer's promises hold for it: every string encodes (all 256 byte symbols are
in the vocabulary), decode(encode(s)) == s (no normalizer beyond NFC, no prefix space), and added tokens
can take over base ids (start_id) because any displaced piece can be spelled in bytes. Anything else is
refused naming the component.
"""
import json
from pathlib import Path

FILE = "tokenizer.json"
# end-of-text names, tried in order when neither tokenizer_config.json nor the checkpoint says which id is eos
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
PRE_TOKENIZERS = ("ByteLevel", "Split", "Digits")   # Sequence members that keep every character
NORMALIZERS = ("NFC",)                             # lossless on NFC text (source code nearly always is)


class TokenizerFileError(ValueError):
    """A tokenizer.json we cannot load or cannot reproduce; data.Tokenizer reports it as a DataError. (Not
    data.DataError itself: this file stays importable without data.py, which imports it.)"""


def byte_symbols():
    """The GPT-2 byte-level alphabet: byte b -> the printable character standing for it in the vocabulary
    (printable Latin-1 bytes stand for themselves, the other 68 are shifted to 256 and up)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, shifted = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + shifted)
            shifted += 1
    return out


def _components(node, key):
    """The members of a (possibly Sequence) tokenizer.json component, as dicts."""
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [m for n in node.get(key, []) for m in _components(n, key)]
    return [node]


def check_reproducible(spec, path):
    """TokenizerFileError naming the first part of a parsed tokenizer.json that breaks data.Tokenizer's promises."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerFileError(f"{path}: model type {model.get('type')!r} is not supported (only byte-level BPE tokenizer.json)")
    for n in _components(spec.get("normalizer"), "normalizers"):
        if n.get("type") not in NORMALIZERS:
            raise TokenizerFileError(f"{path}: normalizer {n.get('type')!r} changes the text (decode(encode(s)) != s); "
                            "only byte-level BPE without normalizer or with NFC is supported "
                            "(a SentencePiece-style tokenizer.json: give its tokenizer.model)")
    pre = _components(spec.get("pre_tokenizer"), "pretokenizers")
    kinds = [p.get("type") for p in pre]
    if "ByteLevel" not in kinds:
        raise TokenizerFileError(f"{path}: pre_tokenizer {kinds or None} has no ByteLevel step (only byte-level BPE is supported)")
    for p in pre:
        if p.get("type") not in PRE_TOKENIZERS:
            raise TokenizerFileError(f"{path}: pre_tokenizer {p.get('type')!r} is not supported (only {', '.join(PRE_TOKENIZERS)})")
        if p.get("type") == "Split" and p.get("behavior") == "Removed":
            raise TokenizerFileError(f"{path}: pre_tokenizer Split with behavior 'Removed' drops the text it matches (decode(encode(s)) != s)")
        if p.get("type") == "ByteLevel" and p.get("add_prefix_space"):
            raise TokenizerFileError(f"{path}: ByteLevel add_prefix_space=true adds a space decode keeps (decode(encode(s)) != s)")
    dec = [d.get("type") for d in _components(spec.get("decoder"), "decoders")]
    if dec != ["ByteLevel"]:
        raise TokenizerFileError(f"{path}: decoder {dec or None} is not supported (only ByteLevel)")
    vocab = model.get("vocab") or {}
    missing = [b for b, ch in byte_symbols().items() if ch not in vocab]
    if missing:
        raise TokenizerFileError(f"{path}: {len(missing)} of the 256 byte symbols are not in the vocabulary (e.g. byte "
                        f"0x{missing[0]:02X}); some text could not be encoded")


def _token_content(v):
    return v.get("content") if isinstance(v, dict) else v


def special_ids(path, vocab):
    """{'eos', 'bos', 'pad'} -> id from the tokenizer_config.json (or config.json) beside a tokenizer.json;
    eos falls back to a well-known end-of-text token."""
    folder = Path(path).parent
    found = {}
    for name in ("tokenizer_config.json", "config.json"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            cfg = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TokenizerFileError(f"{f}: not readable JSON ({e})")
        for kind in ("eos", "bos", "pad"):
            if kind in found:
                continue
            content = _token_content(cfg.get(f"{kind}_token"))
            if isinstance(content, str) and content in vocab:
                found[kind] = vocab[content]
                continue
            i = cfg.get(f"{kind}_token_id")
            i = i[0] if isinstance(i, list) and i else i
            if isinstance(i, int) and i >= 0:
                found[kind] = i
    if "eos" not in found:
        found["eos"] = next((vocab[n] for n in EOS_NAMES if n in vocab), None)
        if found["eos"] is None:
            raise TokenizerFileError(f"{path}: no end-of-text token (no eos_token in tokenizer_config.json and none of {', '.join(EOS_NAMES)})")
    return {k: found.get(k) for k in ("eos", "bos", "pad")}


class HFTokenizerBase:
    """A tokenizer.json under data.Tokenizer (which adds its own added tokens on top): plain-text encoding,
    decoding, the piece table, and what start_id reuse needs (byte ids, reserved ids, piece bytes)."""
    FILE = FILE
    KIND = "hf-tokenizer-json"

    def __init__(self, path, specials=None):
        try:  # optional dependency: only tokenizer.json models need it
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError:
            raise TokenizerFileError(f"{path}: reading a tokenizer.json needs the 'tokenizers' package (pip install tokenizers)")
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerFileError(f"{path}: not a readable tokenizer.json ({e})")
        if not isinstance(spec, dict):
            raise TokenizerFileError(f"{path}: not a tokenizer.json (expected a JSON object)")
        check_reproducible(spec, path)
        try:
            self.tk = RustTokenizer.from_str(json.dumps(spec))
        except Exception as e:  # the Rust library raises a bare Exception on bad files
            raise TokenizerFileError(f"{path}: tokenizers could not load it ({e})")
        vocab = self.tk.get_vocab(with_added_tokens=True)
        self.size = max(vocab.values()) + 1
        self.specials = {k: v for k, v in (specials or special_ids(path, vocab)).items()}
        self.unk_id = None
        symbols = byte_symbols()
        self.byte_ids = [vocab[symbols[b]] for b in range(256)]
        self._byte_of = {ch: b for b, ch in symbols.items()}
        self._reserved = set(self.byte_ids) | {t["id"] for t in spec.get("added_tokens") or [] if t.get("special")}

    def encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        return self.tk.decode(ids, skip_special_tokens=False)

    def id_to_piece(self, i):
        return self.tk.id_to_token(i)

    def piece_to_id(self, piece):
        return self.tk.token_to_id(piece)

    def piece_bytes(self, i):
        piece = self.tk.id_to_token(i)
        if all(ch in self._byte_of for ch in piece):
            return bytes(self._byte_of[ch] for ch in piece)
        return piece.encode()  # one of the tokenizer's own added tokens: stored as plain text

    def reserved(self, i):
        """Ids start_id must not take over: byte symbols (the spelling of everything) and special tokens."""
        return i in self._reserved

// Reference tokenization with Hugging Face's `tokenizers` (its Rust core, via the npm package), for
// parity tests of runtime/tokenizer.
//
//   node hf_tokenize.js --npm-dir DIR --tokenizer tokenizer.json MODE FILE
//
// MODE:
//   --text-file F  one input per line of F (lines split at '\n'; a final '\n' ends the last line)
//   --hex-file F   one input per line, each line the hex of the input's raw bytes
//   --decode-file F  one JSON array of ids per line; prints the hex of the decoded UTF-8 text
// Encoding modes print one JSON array of ids per input, without template tokens (add_special_tokens
// off). Bytes become text with the WHATWG UTF-8 decoder (each maximal ill-formed subpart -> U+FFFD,
// a leading BOM kept), the rule the C++ tokenizer states, so inputs with invalid UTF-8 compare too.
'use strict';

const fs = require('fs');
const path = require('path');

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  return args;
}

// Splits a Buffer at '\n' bytes; a trailing '\n' does not start another line.
function splitLines(buf) {
  const lines = [];
  let start = 0;
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] === 0x0a) {
      lines.push(buf.subarray(start, i));
      start = i + 1;
    }
  }
  if (start < buf.length) lines.push(buf.subarray(start));
  return lines;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { Tokenizer } = require(path.join(args['npm-dir'], 'node_modules', 'tokenizers'));
  const tok = Tokenizer.fromFile(args.tokenizer);
  const decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  const out = [];
  if (args['decode-file']) {
    for (const line of splitLines(fs.readFileSync(args['decode-file']))) {
      const text = await tok.decode(JSON.parse(line.toString()), false);
      out.push(Buffer.from(text, 'utf8').toString('hex'));
    }
  } else {
    let inputs;
    if (args['hex-file']) {
      inputs = splitLines(fs.readFileSync(args['hex-file'])).map((l) => decoder.decode(Buffer.from(l.toString(), 'hex')));
    } else {
      inputs = splitLines(fs.readFileSync(args['text-file'])).map((l) => decoder.decode(l));
    }
    const kBatch = 512;
    for (let i = 0; i < inputs.length; i += kBatch) {
      const encodings = await tok.encodeBatch(inputs.slice(i, i + kBatch), { addSpecialTokens: false });
      for (const e of encodings) out.push(JSON.stringify(e.getIds()));
    }
  }
  process.stdout.write(out.length ? out.join('\n') + '\n' : '');
}

main().catch((err) => {
  console.error(`hf_tokenize.js: ${err.stack || err}`);
  process.exit(1);
});

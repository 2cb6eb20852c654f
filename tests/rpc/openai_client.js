// OpenAI's own client (the `openai` npm package) against `dsv4 serve --http-port`, for the HTTP
// gateway's end-to-end test:
//
//   node openai_client.js --npm-dir DIR --base-url http://127.0.0.1:PORT/v1 --model NAME
//
// Lists the models, streams a chat completion (with usage), asks the same without streaming, runs
// a text completion, and sends one bad request; prints one JSON object with what it saw. Any error
// the client throws outside the bad request ends the script with status 1.
'use strict';

const path = require('path');

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const OpenAI = require(path.join(args['npm-dir'], 'node_modules', 'openai'));
  const client = new OpenAI({baseURL: args['base-url'], apiKey: 'unused', maxRetries: 0, timeout: 300000});
  const out = {};

  out.models = [];
  for await (const m of client.models.list()) out.models.push(m.id);

  // The same seeded request streamed and not; ignore_eos (a vLLM extension) fixes the length.
  const request = {
    model: args.model,
    messages: [{role: 'system', content: 'Be brief.'}, {role: 'user', content: 'Tell me about the sea.'}],
    max_tokens: 12,
    temperature: 0.8,
    seed: 42,
    ignore_eos: true,
  };
  const stream = await client.chat.completions.create({...request, stream: true, stream_options: {include_usage: true}});
  out.stream = {text: '', chunks: 0, finish_reason: null, usage: null, role: null, ids: new Set()};
  for await (const chunk of stream) {
    out.stream.chunks++;
    out.stream.ids.add(chunk.id);
    if (chunk.usage) out.stream.usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta && choice.delta.role) out.stream.role = choice.delta.role;
      if (choice.delta && choice.delta.content) out.stream.text += choice.delta.content;
      if (choice.finish_reason) out.stream.finish_reason = choice.finish_reason;
    }
  }
  out.stream.ids = out.stream.ids.size;

  const once = await client.chat.completions.create(request);
  out.once = {text: once.choices[0].message.content, finish_reason: once.choices[0].finish_reason, usage: once.usage,
              object: once.object};

  const completion = await client.completions.create({model: args.model, prompt: 'The sea', max_tokens: 4, seed: 1,
                                                      ignore_eos: true});
  out.completion = {text: completion.choices[0].text, usage: completion.usage, object: completion.object};

  try {
    await client.chat.completions.create({...request, temperature: 5});
    out.error = null;
  } catch (e) {
    out.error = {status: e.status, param: e.param === undefined ? null : e.param, type: e.type || null,
                 message: e.message};
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(`openai_client: ${e.stack || e}\n`);
  process.exit(1);
});

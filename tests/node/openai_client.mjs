// The official `openai` npm client against gptq serve (tests/test_serve.cpp, Serve.OfficialOpenAiNodeClient):
//   node openai_client.mjs BASE_URL API_KEY MODEL
// Runs completions and chat completions, each plain and streamed (with usage in the last chunk),
// lists the models, and provokes an API error; prints one JSON object with what it saw.
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120000 });
const out = {};

const c = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 12, temperature: 0 });
out.completion = { text: c.choices[0].text, finish_reason: c.choices[0].finish_reason, usage: c.usage, object: c.object };

let text = "", usage = null, finish = null;
const cs = await client.completions.create({
  model, prompt: "Once upon a time", max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of cs) {
  for (const ch of chunk.choices) {
    text += ch.text ?? "";
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  if (chunk.usage) usage = chunk.usage;
}
out.completion_stream = { text, finish_reason: finish, usage };

const messages = [{ role: "user", content: "Once upon a time" }];
const ch = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
out.chat = { content: ch.choices[0].message.content, role: ch.choices[0].message.role, usage: ch.usage, object: ch.object };

text = ""; usage = null; finish = null;
const chs = await client.chat.completions.create({
  model, messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of chs) {
  for (const choice of chunk.choices) {
    text += choice.delta?.content ?? "";
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  if (chunk.usage) usage = chunk.usage;
}
out.chat_stream = { content: text, finish_reason: finish, usage };

const models = [];
for await (const m of client.models.list()) models.push(m.id);
out.models = models;

try {
  await client.completions.create({ model, prompt: "a", max_tokens: "ten" });
  out.error = null;
} catch (e) {
  out.error = { status: e.status, is_api_error: e instanceof OpenAI.APIError, message: e.message };
}
try {
  await new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 }).models.list();
  out.auth_error = null;
} catch (e) {
  out.auth_error = { status: e.status, is_auth_error: e instanceof OpenAI.AuthenticationError };
}
console.log(JSON.stringify(out));

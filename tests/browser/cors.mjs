// A browser SMART app calling the FHIR API cross-origin, in a real headless Chromium: for each
// page origin (`http://localhost:PORT`), the app page, served here on that port (a real loopback
// server, so Chromium's local-network rules see loopback calling loopback), fetches a resource
// with its bearer token, which makes Chromium send a CORS preflight first. Prints, per origin, what the
// page's script could see: the status, the ETag and the family name, or the fetch error.
//
// Environment: CARAPACE_CHROMIUM (browser binary), RESOURCE_URL, TOKEN, ORIGINS (comma-separated).
import { chromium } from "playwright-core";
import { createServer } from "node:http";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

const browser = await chromium.launch({
  executablePath: env("CARAPACE_CHROMIUM"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const results = {};
const servers = [];
try {
  for (const origin of env("ORIGINS").split(",")) {
    const page = await browser.newPage();
    // What Chromium says about a refused call goes to stderr (the test shows it on failure).
    page.on("console", (m) => console.error(`${origin}: ${m.text()}`));
    const app = createServer((_, res) => {
      res.writeHead(200, { "Content-Type": "text/html" });
      res.end("<!doctype html><title>app</title>");
    });
    await new Promise((ok) => app.listen(Number(new URL(origin).port), "127.0.0.1", ok));
    servers.push(app);
    await page.goto(`${origin}/app`);
    results[origin] = await page.evaluate(async ({ url, token }) => {
      try {
        const r = await fetch(url, {
          headers: { Authorization: `Bearer ${token}`, Accept: "application/fhir+json" },
        });
        const body = await r.json();
        return { status: r.status, etag: r.headers.get("ETag"), family: body.name?.[0]?.family ?? null };
      } catch (e) {
        return { error: String(e) };
      }
    }, { url: env("RESOURCE_URL"), token: env("TOKEN") });
    await page.close();
  }
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
  for (const app of servers) app.close();
}

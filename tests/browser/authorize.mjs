// Drives a real headless Chromium through Carapace's authorization-code flow: sign-in page,
// TOTP page, consent page. Prints the app's redirect URL (with the code) as JSON on stdout.
//
// Environment: CARAPACE_CHROMIUM (browser binary), AUTHORIZE_URL, REDIRECT_PREFIX, USERNAME,
// PASSWORD, TOTP_SECRET (base32), SCREENSHOT (optional PNG path of the consent page).
// The patient picker (a practitioner's launch/patient): PICK_PATIENT (the id to choose), and
// optionally FORGE_PATIENT (first post the picker's form with this id instead, as a page altered
// in the browser would; its redirect is reported as `forged`) and PICK_SEARCH (a name searched
// before choosing). Reports the ids listed at first (`listed`) and after the search (`searched`).
import { chromium } from "playwright-core";
import { createHmac } from "node:crypto";

function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of text.replace(/=+$/, "").toUpperCase()) {
    const v = alphabet.indexOf(c);
    if (v < 0) throw new Error("bad base32");
    bits += v.toString(2).padStart(5, "0");
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

// RFC 6238 with SHA-1, 6 digits, 30 s steps.
function totp(secret, at = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 1000 / 30)));
  const mac = createHmac("sha1", base32Decode(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 15;
  const value = (mac.readUInt32BE(offset) & 0x7fffffff) % 1000000;
  return String(value).padStart(6, "0");
}

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
try {
  const context = await browser.newContext();
  let page = await context.newPage();
  let redirect = null;
  // The app's redirect URI is not served by anyone: catch the navigation to it.
  await context.route(`${env("REDIRECT_PREFIX")}**`, async (route) => {
    redirect = route.request().url();
    await route.fulfill({ status: 200, contentType: "text/html", body: "<p>app received the code</p>" });
  });
  await page.goto(env("AUTHORIZE_URL"));
  await page.fill("#username", env("USERNAME"));
  await page.fill("#password", env("PASSWORD"));
  await page.click("#sign-in");
  await page.waitForSelector("#code");
  await page.fill("#code", totp(env("TOTP_SECRET")));
  await page.click("#verify");
  await page.waitForSelector("#allow");
  const scopes = await page.textContent("#scopes");
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
  const waitRedirect = async () => {
    for (let i = 0; i < 100 && !redirect; i++) await page.waitForTimeout(50);
    const r = redirect;
    redirect = null;
    return r;
  };
  const picker = {};
  const pick = process.env.PICK_PATIENT;
  const listedIds = () => page.$$eval("#patients button", (bs) => bs.map((b) => b.value));
  if (pick) {
    await Promise.all([page.waitForNavigation(), page.click("#allow")]);
    picker.listed = await listedIds();
    if (process.env.FORGE_PATIENT) {
      await page.$eval("#patients button", (b, v) => { b.value = v; }, process.env.FORGE_PATIENT);
      await page.click("#patients button");
      picker.forged = await waitRedirect();
      // Again in a new tab of the same browser (signed in): the first may still be navigating.
      page = await context.newPage();
      await page.goto(env("AUTHORIZE_URL"));
      await Promise.all([page.waitForNavigation(), page.click("#allow")]);
    }
    if (process.env.PICK_SEARCH) {
      await page.fill("#patient-search", process.env.PICK_SEARCH);
      await Promise.all([page.waitForNavigation(), page.click("#search")]);
      picker.searched = await listedIds();
    }
    await page.click(`[id="patient-${pick}"]`);
  } else {
    await page.click("#allow");
  }
  console.log(JSON.stringify({ redirect: await waitRedirect(), scopes, picker }));
} finally {
  await browser.close();
}

// A published client's document round trip: @medplum/core's createBinary (a raw POST of the bytes
// with X-Security-Context) and download (GET with Accept: */*) against carapace-server.
// Env: BASE_URL (the server's origin, with a trailing slash), ACCESS_TOKEN, SECURITY_CONTEXT.
// Prints one JSON line: what was uploaded, what came back, and whether the digests agree.
import { MedplumClient } from "@medplum/core";
import { createHash, randomBytes } from "node:crypto";

const medplum = new MedplumClient({
  baseUrl: process.env.BASE_URL,
  fhirUrlPath: "fhir",
  fetch: globalThis.fetch,
});
medplum.setAccessToken(process.env.ACCESS_TOKEN);

const bytes = Buffer.concat([Buffer.from("%PDF-1.7\n"), randomBytes(1_500_000)]);
const binary = await medplum.createBinary({
  data: new Blob([bytes], { type: "application/pdf" }),
  contentType: "application/pdf",
  filename: "discharge-letter.pdf",
  securityContext: { reference: process.env.SECURITY_CONTEXT },
});
const blob = await medplum.download(medplum.fhirUrl("Binary", binary.id).toString());
const back = Buffer.from(await blob.arrayBuffer());
const digest = (b) => createHash("sha256").update(b).digest("hex");
console.log(
  JSON.stringify({
    id: binary.id,
    contentType: binary.contentType,
    uploaded: bytes.length,
    downloaded: back.length,
    sha256Matches: digest(bytes) === digest(back),
  }),
);

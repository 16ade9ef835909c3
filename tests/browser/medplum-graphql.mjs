// A published client's FHIR GraphQL: @medplum/core's graphql() (POST [base]/$graphql with
// application/json {query, operationName, variables}) against carapace-server, then a mutation it
// must refuse. Env: BASE_URL (the server's origin, with a trailing slash), ACCESS_TOKEN, PATIENT_ID.
// Prints one JSON line: the query's result and the refusal's issue code.
import { MedplumClient } from "@medplum/core";

const medplum = new MedplumClient({
  baseUrl: process.env.BASE_URL,
  fhirUrlPath: "fhir",
  fetch: globalThis.fetch,
});
medplum.setAccessToken(process.env.ACCESS_TOKEN);

const result = await medplum.graphql(
  `query Chart($id: ID!, $subject: String!) {
     Patient(id: $id) { id name { family given } }
     ObservationList(subject: $subject) { id subject { resource { ... on Patient { id } } } }
   }`,
  "Chart",
  { id: process.env.PATIENT_ID, subject: `Patient/${process.env.PATIENT_ID}` },
);
let mutation = null;
try {
  await medplum.graphql(`mutation { PatientCreate(res: {}) { id } }`);
  mutation = "accepted";
} catch (err) {
  mutation = err.outcome?.issue?.[0]?.code ?? String(err);
}
console.log(JSON.stringify({ result, mutation }));

// fhir-kit-client (a published FHIR client) against Carapace: a compartment search (GET and
// POST), a system search over two types, and a FHIRPath Patch sent with the client's own
// request(). Prints one JSON line of what the server answered; tests/e2e/client_compat.rs asserts.
import { Client } from 'fhir-kit-client';

const client = new Client({
  baseUrl: process.env.FHIR_BASE,
  customHeaders: { Authorization: `Bearer ${process.env.ACCESS_TOKEN}` },
});
const patient = process.env.PATIENT_ID;
const ids = (bundle) => (bundle.entry ?? []).map((e) => `${e.resource.resourceType}/${e.resource.id}`).sort();

const compartment = await client.compartmentSearch({
  resourceType: 'Observation',
  compartment: { resourceType: 'Patient', id: patient },
  searchParams: { code: 'http://loinc.org|8867-4' },
});
const compartmentByPost = await client.compartmentSearch({
  resourceType: 'Observation',
  compartment: { resourceType: 'Patient', id: patient },
  searchParams: { code: 'http://loinc.org|8867-4' },
  options: { postSearch: true },
});
// A system search's pages, followed with the client's nextPage().
const systemEntries = [];
let page = await client.systemSearch({ searchParams: { _type: 'Patient,Observation', _count: 50 } });
let pages = 1;
for (;;) {
  systemEntries.push(...(page.entry ?? []));
  if (!(page.link ?? []).some((l) => l.relation === 'next') || pages > 10) break;
  page = await client.nextPage({ bundle: page });
  pages += 1;
}
// The client's patch() sends JSON Patch only; a FHIRPath Patch goes by its request().
const patched = await client.request(`Patient/${patient}`, {
  method: 'PATCH',
  options: { headers: { 'Content-Type': 'application/fhir+json' } },
  body: {
    resourceType: 'Parameters',
    parameter: [
      { name: 'operation', part: [
        { name: 'type', valueCode: 'add' },
        { name: 'path', valueString: 'Patient' },
        { name: 'name', valueString: 'birthDate' },
        { name: 'value', valueDate: '1970-01-02' },
      ] },
      { name: 'operation', part: [
        { name: 'type', valueCode: 'replace' },
        { name: 'path', valueString: 'Patient.name[0].family' },
        { name: 'value', valueString: 'Patched' },
      ] },
    ],
  },
});
console.log(JSON.stringify({
  compartment: ids(compartment),
  compartmentByPost: ids(compartmentByPost),
  systemTypes: [...new Set(systemEntries.map((e) => e.resource.resourceType))].sort(),
  systemCount: systemEntries.length,
  systemPages: pages,
  patched: { birthDate: patched.birthDate, family: patched.name?.[0]?.family, versionId: patched.meta?.versionId },
}));

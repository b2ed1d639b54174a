// Counts the results of the HTTP cache test suite (npm `http-cache-tests`)
// by kind and section, dependencies honoured as the suite's own display
// does (lib/display.mjs `determineTestResult`): a test whose dependency did
// not pass counts as not passed.
//
// usage: node cache_tests_summary.mjs SUITE_DIR RESULTS.json [NAME RESULTS.json]...
//   prints one table: a row a section, a column a kind and implementation.
// With --floor N it exits 1 when fewer than N required tests pass in the
// first RESULTS.json.

import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const args = process.argv.slice(2)
const suiteDir = args.shift()
let floor
const runs = []
while (args.length) {
  const arg = args.shift()
  if (arg === '--floor') {
    floor = Number(args.shift())
  } else {
    runs.push({ name: arg, file: args.shift() })
  }
}

const suites = (await import(pathToFileURL(path.join(suiteDir, 'tests', 'index.mjs')))).default
const byId = new Map()
for (const suite of suites) {
  for (const test of suite.tests) {
    byId.set(test.id, test)
  }
}

// true: passed (or, for a check, answered yes).
function passed (results, id, seen = new Set()) {
  const test = byId.get(id)
  const result = results[id]
  if (result === undefined || seen.has(id)) {
    return false
  }
  seen.add(id)
  for (const dependency of test.depends_on || []) {
    if (!passed(results, dependency, seen)) {
      return false
    }
  }
  return result === true
}

const kinds = ['required', 'optimal', 'check']
const kindOf = (test) => test.kind || 'required'
const loaded = runs.map(run => ({ ...run, results: JSON.parse(fs.readFileSync(run.file, 'utf8')) }))

function count (results, tests, kind) {
  const ofKind = tests.filter(t => kindOf(t) === kind)
  return [ofKind.filter(t => passed(results, t.id)).length, ofKind.length]
}

const header = ['section'].concat(...kinds.map(k => loaded.map(r => `${k} ${r.name}`)))
const rows = [header]
const totals = loaded.map(() => ({ required: 0, optimal: 0, check: 0 }))
const sizes = { required: 0, optimal: 0, check: 0 }
for (const suite of suites) {
  const row = [suite.id]
  for (const kind of kinds) {
    loaded.forEach((run, i) => {
      const [pass, total] = count(run.results, suite.tests, kind)
      totals[i][kind] += pass
      if (i === 0) sizes[kind] += total
      row.push(total ? `${pass}/${total}` : '-')
    })
  }
  rows.push(row)
}
const totalRow = ['all']
for (const kind of kinds) {
  loaded.forEach((run, i) => totalRow.push(`${totals[i][kind]}/${sizes[kind]}`))
}
rows.push(totalRow)
const widths = header.map((_, c) => Math.max(...rows.map(r => String(r[c]).length)))
for (const row of rows) {
  console.log(row.map((cell, c) => String(cell).padEnd(widths[c])).join('  ').trimEnd())
}

if (floor !== undefined) {
  const got = totals[0].required
  if (got < floor) {
    console.log(`required tests passed through ${loaded[0].name}: ${got}, below the floor of ${floor}`)
    process.exit(1)
  }
  console.log(`required tests passed through ${loaded[0].name}: ${got} (floor ${floor})`)
}

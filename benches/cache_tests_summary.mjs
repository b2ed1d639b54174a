// Counts the results of the HTTP cache test suite (npm `http-cache-tests`)
// by kind and section, dependencies honoured as the suite's own display
// does (lib/display.mjs `determineTestResult`): a test whose dependency did
// not pass counts as not passed.
//
// usage: node cache_tests_summary.mjs SUITE_DIR RESULTS.json [NAME RESULTS.json]...
//   prints one table: a row a section, a column a kind and implementation.
// With --floor N it exits 1 when fewer than N required tests pass in the
// first RESULTS.json. With --failing it also lists the required tests the
// first RESULTS.json does not pass (id, section, name, what went wrong).

import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const args = process.argv.slice(2)
const suiteDir = args.shift()
let floor
let failing = false
const runs = []
while (args.length) {
  const arg = args.shift()
  if (arg === '--floor') {
    floor = Number(args.shift())
  } else if (arg === '--failing') {
    failing = true
  } else {
    runs.push({ name: arg, file: args.shift() })
  }
}

const suites = (await import(pathToFileURL(path.join(suiteDir, 'tests', 'index.mjs')))).default
const byId = new Map()
const sectionOf = new Map()
for (const suite of suites) {
  for (const test of suite.tests) {
    byId.set(test.id, test)
    sectionOf.set(test.id, suite.id)
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

if (failing) {
  const results = loaded[0].results
  for (const [id, test] of byId) {
    if (kindOf(test) !== 'required' || passed(results, id)) continue
    const result = results[id]
    const why = result === undefined ? 'not run'
      : result === true ? 'a dependency did not pass'
        : Array.isArray(result) ? result.join(': ') : String(result)
    console.log(`${sectionOf.get(id)}  ${id}  ${test.name}\n    ${why}`)
  }
}

if (floor !== undefined) {
  const got = totals[0].required
  if (got < floor) {
    console.log(`required tests passed through ${loaded[0].name}: ${got}, below the floor of ${floor}`)
    process.exit(1)
  }
  console.log(`required tests passed through ${loaded[0].name}: ${got} (floor ${floor})`)
}

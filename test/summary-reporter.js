// Prints one plain closing line, `N passed, N failed, N skipped`, after jest's own summary,
// so CI can tell how many tests ran whatever reporter it understands.
class SummaryReporter {
  onRunComplete(_contexts, results) {
    const skipped = results.numPendingTests + results.numTodoTests;
    const failedSuites = results.numRuntimeErrorTestSuites;
    process.stdout.write(`\n${results.numPassedTests} passed, ${results.numFailedTests + failedSuites} failed, ${skipped} skipped\n`);
  }
}
module.exports = SummaryReporter;

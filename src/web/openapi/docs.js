// Draws the API reference (GET /api/v1/docs) with the vendored Redoc. System fonts: nothing is fetched.
(function () {
  var root = document.getElementById('redoc');
  var fonts = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  Redoc.init(root.getAttribute('data-spec-url'), {
    expandResponses: '200,201,202',
    // Patterns are for machines: the NUL guard on every string would repeat on every field, and the
    // descriptions say in words what a field takes.
    hideSchemaPattern: true,
    jsonSampleExpandLevel: 3,
    menuToggle: true,
    pathInMiddlePanel: true,
    requiredPropsFirst: true,
    sortTagsAlphabetically: false,
    theme: {
      breakpoints: { small: '50rem', medium: '75rem', large: '105rem' },
      typography: {
        fontFamily: fonts,
        headings: { fontFamily: fonts },
        code: { fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace', wrap: true }
      }
    }
  }, root);
})();

// Swagger UI over the gateway's own OpenAPI document (gateway/docs_page.py):
// a file of its own, not an inline script, so the page's CSP needs no 'unsafe-inline'.
window.ui = SwaggerUIBundle({
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  deepLinking: true,
  persistAuthorization: false,
});

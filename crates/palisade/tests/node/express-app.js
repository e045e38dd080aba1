// A real Express 4 application (case-insensitive, non-strict routing: Express's defaults),
// used by tests/gateway/paths.rs as the upstream whose routing Palisade must not be bypassed
// against. Prints its port on the first line of stdout; every answer names the handler.
const express = require('express');
const app = express();
const handled = (name) => (req, res) => res.json({ handler: name, path: req.originalUrl });
app.get('/api/expensive', handled('expensive'));
app.post('/api/login', handled('login'));
app.get('/api/items/:id', handled('items'));
app.get('/api/public', handled('public'));
app.use((req, res) => res.status(404).json({ handler: 'none', path: req.originalUrl }));
const server = app.listen(0, '127.0.0.1', () => {
  console.log(server.address().port);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

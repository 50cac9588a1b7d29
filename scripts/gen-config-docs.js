#!/usr/bin/env node
// Writes docs/configuration.md from the config schema (run after `npm run build`).
'use strict';
const { writeFileSync } = require('node:fs');
const { join } = require('node:path');
const { renderConfigReference } = require('../dist/src/config/docs');
writeFileSync(join(__dirname, '..', 'docs', 'configuration.md'), renderConfigReference());

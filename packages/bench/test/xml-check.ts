// A tiny well-formedness check for the generated SVG: balanced tags, quoted attributes, no raw
// '<' or bare '&' in text. Enough to catch broken hand-written markup without an XML parser.
export function checkXml(xml: string): string[] {
  const errors: string[] = [];
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*(\/?)>/g;
  let last = 0;
  let m: RegExpExecArray | null;
  let roots = 0;
  while ((m = tag.exec(body)) !== null) {
    const text = body.slice(last, m.index);
    if (text.includes('<') || text.includes('>')) errors.push(`stray markup near: ${text.slice(0, 60)}`);
    if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(text)) errors.push(`bare & in: ${text.slice(0, 60)}`);
    const [, close, name, , selfClose] = m;
    if (close) {
      const open = stack.pop();
      if (open !== name) errors.push(`</${name}> closes <${open}>`);
    } else if (!selfClose) {
      if (stack.length === 0) roots++;
      stack.push(name);
    } else if (stack.length === 0) roots++;
    last = tag.lastIndex;
  }
  if (body.slice(last).trim() !== '') errors.push(`trailing text: ${body.slice(last, last + 60)}`);
  if (stack.length) errors.push(`unclosed: ${stack.join(', ')}`);
  if (roots !== 1) errors.push(`${roots} root elements`);
  return errors;
}
